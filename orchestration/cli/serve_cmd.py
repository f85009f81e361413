"""`ctrflow serve`: the scoring service on loopback (unless told otherwise), hot-reloading the champion."""

from __future__ import annotations

import typer

from orchestration.cli.app import app, cli_settings, usage_error


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1, env "
                                    "CTRFLOW_SERVING_HOST); anything else exposes the service."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535,
                                    help="Port (default 8000, env CTRFLOW_SERVING_PORT)."),
) -> None:
    """Serve POST /v1/score, /healthz, /readyz, /v1/model and /metrics until interrupted."""
    from serving_stub.server import serve

    settings = cli_settings(ctx, serving_host=host, serving_port=port)
    try:
        report = serve(settings)
    except OSError as exc:  # port in use, address not local
        raise usage_error(f"cannot serve on {settings.serving_host}:{settings.serving_port}: {exc}") from None
    if report.served_sink is not None:
        typer.echo(f"prediction log: {report.served_sink.rows} rows written to the served table", err=True)
