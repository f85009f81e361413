"""`ctrflow models ...` over the registry's use cases, each with --json (one object on the last line)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from orchestration.cli import app, models_cmd
from training.registry import read_champion_pointer

from .conftest import offline_servability


@pytest.fixture
def cli(trained, monkeypatch: pytest.MonkeyPatch):
    # The serving stub's check is what the command imports; these tests inject the offline one so the
    # CLI wiring is tested the same with or without the serving package.
    monkeypatch.setattr(models_cmd, "_servability_check", lambda: offline_servability)
    settings, versions = trained
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--home", str(settings.home), "models", *args])
        return result.exit_code, result.stdout, result.stderr

    return run, settings, versions


def _last(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_list_show_gate_promote_history_rollback(cli) -> None:
    run, settings, v = cli
    code, out, _ = run("list", "--json")
    assert code == 0
    listed = {r["version"]: r for r in _last(out)["versions"]}
    assert set(listed) == {v.good, v.weak, v.weak2}
    assert {r["status"] for r in listed.values()} == {"candidate"}
    assert listed[v.good]["models"][0] | {"metrics": None} == {
        "name": "student_0", "role": "student", "family": "student", "served": True, "metrics": None}

    code, out, _ = run("show", v.good, "--json")
    shown = _last(out)
    assert code == 0 and shown["holdout"]["part"] == "tail" and shown["train"]["dataset"] == "ds-reg"

    code, out, _ = run("gate", v.weak, "--json")
    assert code == 1 and _last(out)["passed"] is False  # FAIL: exit 1, the record still printed
    code, out, _ = run("gate", v.good, "--json")
    assert code == 0 and [b["passed"] for b in _last(out)["blessings"]] == [True, True, True]

    code, out, err = run("promote", v.weak2, "--json")
    assert code == 2 and _last(out)["promoted"] is False and err.startswith("error: ")
    code, out, _ = run("promote", v.good, "--json")
    assert code == 0 and _last(out)["pointer"]["version"] == v.good == read_champion_pointer(settings).version

    code, out, err = run("promote", v.weak, "--force")
    assert code == 2 and "--reason" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run("promote", v.weak, "--force", "--reason", "canary", "--json")
    assert code == 0 and _last(out)["forced"] and _last(out)["reason"] == "canary"

    code, out, _ = run("history", "--json")
    assert [(e["action"], e["version"], e["forced"]) for e in _last(out)["history"]] == [
        ("promote", v.good, False), ("promote", v.weak, True)]
    code, out, _ = run("rollback", "--json")
    assert code == 0 and (_last(out)["restored"], _last(out)["demoted"]) == (v.good, v.weak)
    assert read_champion_pointer(settings).version == v.good
    code, out, err = run("rollback")
    assert code == 2 and err.startswith("error: no earlier champion") and "Traceback" not in err

    code, out, _ = run("verify", "--json")
    report = _last(out)
    assert code == 1 and report["champion"] == v.good and not report["ok"]
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "pointer": True, "artifact": True, "feature_service": False}


def test_bad_requests_are_one_line_errors(cli) -> None:
    run, _, _ = cli
    for args in (("show", "../etc"), ("gate", "v-nope"), ("promote", "v-nope")):
        code, _, err = run(*args)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
