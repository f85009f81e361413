"""`ctrflow` command line: importing the command modules registers their commands on the app."""

from __future__ import annotations

import importlib

from orchestration.cli.app import app

# Each module owns one area of the CLI; a module that is not there yet is simply not registered.
_COMMAND_MODULES = ("ingest", "features_cmd", "store_cmd", "train_cmd", "flows_cmd", "demo")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"orchestration.cli.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"orchestration.cli.{_name}":
            raise


def main() -> None:
    app()
