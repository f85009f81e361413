"""`ctrflow` command line: importing the command modules registers their commands on the app."""

from __future__ import annotations

import importlib
import logging
import sys

from pydantic import ValidationError

from orchestration.cli.app import app, usage_error, validation_message

# Each module owns one area of the CLI. Imported in this order (not the alphabetical order plain imports
# would be sorted into) because registration order is the order `ctrflow --help` lists the commands in.
_COMMAND_MODULES = (
    "ingest", "features_cmd", "store_cmd", "train_cmd", "models_cmd", "serve_cmd", "flows_cmd", "gc_cmd",
    "demo",
)

# Importing Beam logs "apitools not found ..." through the root logger, whose first use would also
# install a stderr handler (logging.basicConfig): a handler that drops records keeps both from happening
# while the commands import, and is removed after.
_import_quiet = logging.NullHandler()
logging.getLogger().addHandler(_import_quiet)
try:
    for _name in _COMMAND_MODULES:
        importlib.import_module(f"orchestration.cli.{_name}")
finally:
    logging.getLogger().removeHandler(_import_quiet)


def main() -> None:
    try:
        app()
    except ValidationError as exc:
        # Settings come from CTRFLOW_* variables: a bad value is bad input, not a crash.
        usage_error(validation_message(exc))
        sys.exit(2)
