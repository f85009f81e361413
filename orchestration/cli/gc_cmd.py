"""`ctrflow gc`: apply the retention limits (keep-last-N versions, training sets, run folders)."""

from __future__ import annotations

import json

import typer

from orchestration.cli.app import app, cli_settings, error_exit


@app.command("gc")
def gc_command(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Remove model versions, training sets and run folders beyond CTRFLOW_KEEP_VERSIONS / _DATASETS /
    _RUNS; the champion, its parents and their training sets are always kept."""
    from training.retention import RetentionError, gc

    try:
        report = gc(cli_settings(ctx), dry_run=dry_run)
    except RetentionError as exc:
        raise error_exit(exc) from None
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    verb = "would remove" if dry_run else "removed"
    parents = max(len(report.protected_versions) - 1, 0)
    print(f"champion: {report.champion or 'none'} (kept with {parents} parent version(s))")
    for kind, names in [("versions", report.removed_versions), ("datasets", report.removed_datasets),
                        ("runs", report.removed_runs)]:
        print(f"{verb} {len(names)} {kind}{': ' + ', '.join(names) if names else ''}")
    print(f"{verb} {report.freed_bytes / 1e6:.1f} MB")
