"""`ctrflow features build | query` end to end through the CLI, with the real Feast online push."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typer.testing import CliRunner

from orchestration.cli import app
from pipelines.settings import Settings

runner = CliRunner()


def test_build_from_file_then_query(home: Path, small_log: Path) -> None:
    built = runner.invoke(
        app, ["--home", str(home), "features", "build", "--from-file", str(small_log), "--json"]
    )
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout)
    assert report["balanced"] and report["final"]
    assert report["rows"]["labelled_samples"] == 2_400
    online = report["batch_reports"][0]["online_rows"]
    newest = runner.invoke(
        app,
        [
            "--home",
            str(home),
            "features",
            "query",
            "--json",
            "SELECT *, count(*) OVER () AS users FROM (SELECT user_id, impressions_24h FROM user_stats "
            "QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY event_time DESC) = 1) ORDER BY user_id",
        ],
    )
    latest = json.loads(newest.stdout)
    assert online["user_stats"] == latest[0]["users"]  # newest row per user pushed, one per user

    from features.online import online_features

    seen = online_features(Settings(home=home), user_id=latest[0]["user_id"], item_ids=["1"]).to_pylist()[0]
    assert seen["user_stats__impressions_24h"] == latest[0]["impressions_24h"]

    q = runner.invoke(
        app,
        [
            "--home",
            str(home),
            "features",
            "query",
            "SELECT count(*) AS n, sum(label) AS clicks FROM labelled_samples",
            "--json",
        ],
    )
    assert q.exit_code == 0, q.output
    rows = json.loads(q.stdout)
    assert rows[0]["n"] == 2_400 and rows[0]["clicks"] > 0

    c = runner.invoke(
        app,
        [
            "--home",
            str(home),
            "features",
            "query",
            "SELECT user_id, impressions_24h FROM user_stats ORDER BY 1, 2 LIMIT 3",
            "--csv",
        ],
    )
    parsed = list(csv.reader(io.StringIO(c.stdout)))
    assert parsed[0] == ["user_id", "impressions_24h"] and len(parsed) == 4

    # Sequences are lists, which CSV has no type for: they come out as JSON arrays.
    seq = runner.invoke(app, ["--home", str(home), "features", "query", "--csv",
                              "SELECT user_id, seq_item_ids FROM user_sequences ORDER BY 1 LIMIT 2"])
    assert seq.exit_code == 0, seq.output
    header, *seq_rows = list(csv.reader(io.StringIO(seq.stdout)))
    assert header == ["user_id", "seq_item_ids"] and len(seq_rows) == 2
    assert all(isinstance(i, int) for i in json.loads(seq_rows[0][1]))

    shown = runner.invoke(app, ["--home", str(home), "features", "query", "--limit", "2",
                                "SELECT * FROM labelled_samples"])
    assert shown.exit_code == 0, shown.output
    assert "(2398 more rows; use --limit, --json or --csv)" in shown.output

    bad = runner.invoke(app, ["--home", str(home), "features", "query", "SELECT * FROM no_such_table"])
    assert bad.exit_code == 2 and "no_such_table" in bad.output


def test_build_needs_exactly_one_source(home: Path) -> None:
    result = runner.invoke(app, ["--home", str(home), "features", "build"])
    assert result.exit_code == 2 and "exactly one" in result.output
    missing = runner.invoke(
        app, ["--home", str(home), "features", "build", "--from-file", str(home / "nope.parquet")]
    )
    assert missing.exit_code == 2 and "not found" in missing.output


def test_stream_runs_micro_batches_and_resumes(settings: Settings, broker, small_log: Path) -> None:
    from pipelines.replay import replay

    replay(small_log, settings.model_copy(update={"topic_partitions": 2}), broker.bootstrap)
    env = {"CTRFLOW_TOPIC_PREFIX": settings.topic_prefix}
    base = [
        "--home",
        str(settings.home),
        "--bootstrap",
        broker.bootstrap,
        "features",
        "stream",
        "--no-online",
    ]
    args = [*base, "--batch-records", "700", "--max-batches", "1", "--json"]
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    one = json.loads(first.stdout)
    assert one["batches"] == 1 and one["balanced"] and one["final"] is False
    assert one["watermark_ms"] is not None and one["rows"]["user_stats"] > 0
    second = runner.invoke(app, args, env=env)
    two = json.loads(second.stdout)
    assert two["batch_reports"][0]["batch_seq"] == 2
    # Resumed at the committed offsets: the two runs read adjacent ranges, no record twice.
    from pipelines.beam import state as st

    committed = st.load_checkpoint(st.job_dir(settings.checkpoints_dir, settings.topic_prefix)).offsets
    for key in committed:
        consumed = [run["accounting"].get(key, {"consumed": 0})["consumed"] for run in (one, two)]
        assert committed[key] == sum(consumed), key
    assert ".700-" in two["batch_reports"][0]["file_name"]
