"""`ctrflow` command line: importing the command modules registers their commands on the app."""

from __future__ import annotations

import importlib

from orchestration.cli.app import app

# Each module owns one area of the CLI. Imported in this order (not the alphabetical order plain imports
# would be sorted into) because registration order is the order `ctrflow --help` lists the commands in.
_COMMAND_MODULES = ("ingest", "features_cmd", "store_cmd", "train_cmd", "serve_cmd", "flows_cmd", "demo")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"orchestration.cli.{_name}")


def main() -> None:
    app()
