"""`ctrflow models ...`: the model registry and its promotion gate (training.registry's use cases)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from orchestration.cli.app import app, cli_settings, usage_error

if TYPE_CHECKING:
    from training.gate import ServabilityCheck

console = Console(stderr=True)
models_app = typer.Typer(help="Model registry: versions, the promotion gate, the champion.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

_JSON = typer.Option(False, "--json", help="Print one JSON object (last line).")


def _emit(as_json: bool, payload: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps(payload, default=str))


def _servability_check() -> ServabilityCheck | None:
    from orchestration.servability import servability_check

    return servability_check(lambda m: typer.secho(f"warning: {m}", err=True, fg=typer.colors.YELLOW))


def _errors():
    from features.datasets import DatasetError
    from training.artifacts import ArtifactError
    from training.gate import GateError
    from training.registry import RegistryError

    return (RegistryError, ArtifactError, GateError, DatasetError)


def _print_gate(gate: Any) -> None:
    verdict = "[green]PASS[/green]" if gate.passed else "[red]FAIL[/red]"
    console.print(f"gate of {gate.version} against {gate.against or 'no champion'}: {verdict}")
    for blessing in gate.blessings:
        mark = "[green]PASS[/green]" if blessing.passed else "[red]FAIL[/red]"
        console.print(f"  {blessing.name:<12} {mark}")
        for reason in blessing.reasons:
            console.print(f"      {reason}")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Every registered version with its status, served model and holdout AUC."""
    from training.registry import list_registered

    try:
        listing = list_registered(cli_settings(ctx))
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, listing.to_dict())
        return
    records = listing.versions
    table = Table(title="model versions")
    for column in ("version", "status", "serve", "service", "auc", "gate", "parent"):
        table.add_column(column)
    for r in records:
        auc = r.metrics.get("auc")
        gate = "-" if r.gate is None else ("PASS" if r.gate.passed else "FAIL")
        table.add_row(r.version, r.status, r.serve_model or "-", r.feature_service or "-",
                      "-" if auc is None else f"{auc:.4f}", gate, r.parent or "-")
    console.print(table)
    for version, reason in listing.unreadable.items():
        typer.secho(f"warning: {version} is not listed: {reason}", err=True, fg=typer.colors.YELLOW)


@models_app.command("show")
def models_show(
    ctx: typer.Context, version: str = typer.Argument(..., help="Version id."), as_json: bool = _JSON
) -> None:
    """One version: lineage, data window, metrics of every model, latest gate record."""
    from training.registry import show_version

    try:
        record = show_version(cli_settings(ctx), version)
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, record.to_dict())
        return
    console.print_json(json.dumps(record.to_dict(), default=str))


@models_app.command("gate")
def models_gate(
    ctx: typer.Context, version: str = typer.Argument(..., help="Version id."), as_json: bool = _JSON
) -> None:
    """Run the promotion gate (data, quality, servability) against the current champion; exit 1 on FAIL."""
    from training.registry import gate_version

    check = _servability_check()
    try:
        gate = gate_version(cli_settings(ctx), version, check)
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, gate.to_dict())
    else:
        _print_gate(gate)
    if not gate.passed:
        raise typer.Exit(code=1)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Version id."),
    force: bool = typer.Option(False, "--force", help="Promote without a PASS gate record (needs --reason)."),
    reason: str | None = typer.Option(None, "--reason", help="Why (required with --force; recorded)."),
    as_json: bool = _JSON,
) -> None:
    """Make VERSION the champion: it needs a PASS gate against the current champion (re-gated if needed)."""
    from training.registry import PromotionRefused, promote

    if force and not (reason and reason.strip()):
        raise usage_error("--force needs --reason \"...\": a forced promotion is recorded with why")
    check = None if force else _servability_check()
    try:
        report = promote(cli_settings(ctx), version, force=force, reason=reason, servability=check)
    except PromotionRefused as exc:
        if as_json:
            _emit(True, {"promoted": False, "error": str(exc),
                         "gate": None if exc.gate is None else exc.gate.to_dict()})
        raise usage_error(str(exc)) from exc
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, {"promoted": True} | report.to_dict())
        return
    console.print(f"[green]{report.version}[/green] is the champion (was {report.previous or 'none'})"
                  + (f"; forced: {report.reason}" if report.forced else ""))


@models_app.command("rollback")
def models_rollback(
    ctx: typer.Context,
    reason: str | None = typer.Option(None, "--reason", help="Why (recorded)."), as_json: bool = _JSON
) -> None:
    """Step one entry back in the champion history; the demoted version is marked rejected."""
    from training.registry import rollback

    try:
        report = rollback(cli_settings(ctx), reason)
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, report.to_dict())
        return
    console.print(f"[green]{report.restored}[/green] is the champion again; {report.demoted} rejected")


@models_app.command("history")
def models_history(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Every champion change, oldest first."""
    from training.registry import history

    try:
        entries = history(cli_settings(ctx))
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, {"history": [e.to_dict() for e in entries]})
        return
    table = Table(title="champion history")
    for column in ("seq", "at", "action", "champion", "previous", "forced", "reason"):
        table.add_column(column)
    for e in entries:
        table.add_row(str(e.seq), e.at, e.action, e.version, e.previous or "-", "yes" if e.forced else "",
                      e.reason or "")
    console.print(table)


@models_app.command("verify")
def models_verify(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Check the champion: pointer agrees, artifact files load, feature service online; exit 1 if not."""
    from training.registry import verify

    try:
        report = verify(cli_settings(ctx))
    except _errors() as exc:
        raise usage_error(str(exc)) from exc
    if as_json:
        _emit(True, report.to_dict())
    else:
        for check in report.checks:
            mark = "[green]ok[/green]" if check.ok else "[red]FAIL[/red]"
            console.print(f"{check.name:<16} {mark}  {check.detail}")
    if not report.ok:
        raise typer.Exit(code=1)
