"""Serving latency and throughput: `ctrflow serve` over HTTP, against two references in the same run.

The default CPU student (``StudentConfig()`` defaults, untrained weights: cost does not depend on them)
is promoted in a fresh home whose online store holds a synthetic warehouse pushed with ``push_latest``.
``ctrflow serve`` runs as its own process (prediction log on, embedded broker); httpx clients send
``POST /v1/score`` for one user and N candidates at concurrency 1 and 16.

References, in process and on the same store and model (the serving path in process is timed too, so
the ratios compare like with like):

- (a) one candidate at a time: the request answered by N single-candidate online reads + model passes;
- (b) Feast: the same request answered through Feast's ``get_online_features`` (``online_features``)
  and the same request encoder + one candidate-parallel pass.

    python -m benchmarks.bench_serving [--requests 300] [--out benchmarks/results/serving.md]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

from benchmarks.machine import machine
from features.feature_repo.definitions import VIEW_TABLES, full_feature_names
from features.manifest import DatasetManifest, ManifestColumns
from features.online import online_features, push_latest
from pipelines.settings import Settings
from serving_stub.champion import load_serving_model
from serving_stub.online_reader import OnlineReader
from serving_stub.scoring import FeatureFetcher, RequestContext, now_ms
from serving_stub.server import free_port
from tests.feature_store.synthetic_warehouse import write_synthetic_warehouse
from training import artifacts
from training.artifacts import DataSlice, ModelRecord
from training.config import StudentConfig
from training.inputs import InputSchema
from training.models import build_model
from training.registry import ChampionPointer, write_champion_pointer

console = Console(soft_wrap=True)
SERVICE = "sequence_ctr"


def make_home(home: Path, users: int, items: int) -> str:
    settings = Settings(home=home)
    tables = write_synthetic_warehouse(settings, n_samples=10, n_users=users, n_items=items,
                                       feature_rows=max(users, items) * 2)
    for table in VIEW_TABLES.values():
        push_latest(settings, table, tables[table])
    config = StudentConfig()
    manifest = DatasetManifest(
        name="bench", feature_service=SERVICE, window_start=None, window_end=None, rows=0, label_rate=0.0,
        content_hash="", columns=ManifestColumns.for_features(full_feature_names(SERVICE, settings.horizons)),
    )
    schema = InputSchema.from_manifest(manifest, max_seq_len=config.seq_len)
    model = build_model("student", config.to_dict(), schema)
    version = artifacts.save_version(
        settings, {"student_0": model}, {"student_0": ModelRecord("student", config.to_dict())},
        schema.to_dict(), feature_service=SERVICE, train=DataSlice(dataset=None, rows=0), holdout=None,
        train_config={}, serve="student_0",
    ).version
    write_champion_pointer(settings, ChampionPointer(version, "student_0", datetime.now(UTC).isoformat()))
    return version


def timed(fn: Callable[[], object], n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(times: list[float], wall_s: float | None = None) -> dict[str, float]:
    result = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
    result["rps"] = len(times) / wall_s if wall_s else 1000 / float(np.mean(times))
    return result


def http_load(url: str, bodies: list[dict], concurrency: int) -> dict[str, float]:
    times: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for body in bodies[k::concurrency]:
                start = time.perf_counter()
                response = client.post("/v1/score", json=body)
                times[k].append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text}")

    with httpx.Client(base_url=url) as warm:
        for body in bodies[:10]:
            warm.post("/v1/score", json=body)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return summary([x for chunk in times for x in chunk], wall)


def start_server(home: Path, port: int) -> subprocess.Popen:
    ctrflow = Path(sys.executable).with_name("ctrflow")
    env = {**os.environ, "CTRFLOW_HOME": str(home)}
    env.pop("CTRFLOW_KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen([str(ctrflow), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("ctrflow serve exited before it was ready")
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError("ctrflow serve did not become ready")


def _picker(cases: list[tuple[str, list[str]]]) -> Callable[[], tuple[str, list[str], RequestContext]]:
    """The cases in turn, each with the current time as its event time."""
    turn = iter(range(10**12))

    def pick() -> tuple[str, list[str], RequestContext]:
        user, items = cases[next(turn) % len(cases)]
        return user, items, RequestContext(now_ms())

    return pick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=300, help="HTTP requests per case.")
    parser.add_argument("--reference-requests", type=int, default=60, help="In-process requests per case.")
    parser.add_argument("--out", type=Path, default=None, help="Append a Markdown result section here.")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows, refs = [], []
    with tempfile.TemporaryDirectory(prefix="ctrflow-bench-serving-") as tmp:
        home = Path(tmp) / "home"
        version = make_home(home, args.users, args.items)
        settings = Settings(home=home)

        # In process: the serving path and the two references, one request at a time, one torch thread
        # (the server's default).
        import torch

        torch.set_num_threads(settings.serving_torch_threads)
        served = load_serving_model(settings, version)
        fetcher = FeatureFetcher(settings, OnlineReader(settings))
        for n in (10, 100):
            cases = [(f"u{rng.integers(0, args.users)}", [f"i{k}" for k in rng.integers(0, args.items, n)])
                     for _ in range(args.reference_requests)]
            pick = _picker(cases)

            def ours(pick: Callable = pick) -> object:
                user, items, ctx = pick()
                return served.score(user, items, ctx, fetcher.fetch(SERVICE, user, items, ctx.event_time_ms))

            def one_at_a_time(pick: Callable = pick) -> object:
                user, items, ctx = pick()
                return [served.score(user, [i], ctx, fetcher.fetch(SERVICE, user, [i], ctx.event_time_ms))
                        for i in items]

            def through_feast(pick: Callable = pick) -> object:
                user, items, ctx = pick()
                table = online_features(settings, user, items, SERVICE)
                features = {c: table.column(c).to_pylist() for c in table.column_names if "__" in c}
                return served.score(user, items, ctx, features)

            # (a) costs N passes per request: fewer of them keep the run short (its spread is small).
            few = max(5, args.reference_requests // 6)
            result = {
                "ours": summary(timed(ours, args.reference_requests)),
                "one_at_a_time": summary(timed(one_at_a_time, few, warmup=2)),
                "feast": summary(timed(through_feast, args.reference_requests)),
            }
            refs.append((n, result))
            console.print(f"in process, {n:>3} candidates: " + " | ".join(
                f"{k} p50 {v['p50']:.2f} ms p99 {v['p99']:.2f} ms" for k, v in result.items()))

        port = free_port()
        proc = start_server(home, port)
        try:
            for n in (10, 100):
                bodies = [{"user_id": f"u{rng.integers(0, args.users)}",
                           "items": [f"i{k}" for k in rng.integers(0, args.items, n)]}
                          for _ in range(args.requests)]
                for concurrency in (1, 16):
                    stats = http_load(f"http://127.0.0.1:{port}", bodies, concurrency)
                    rows.append((n, concurrency, stats))
                    console.print(f"HTTP {n:>3} candidates, concurrency {concurrency:>2}: "
                                  f"p50 {stats['p50']:.2f} ms p99 {stats['p99']:.2f} ms, "
                                  f"{stats['rps']:.0f} requests/s")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    load = os.getloadavg()[0]
    if args.out:
        lines = [
            f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Command: `python -m benchmarks.bench_serving --requests {args.requests} "
            f"--reference-requests {args.reference_requests}`  ",
            f"Machine: {machine()} (load average {load:.1f} at the end of the run)  ",
            f"Store: {args.users:,} users, {args.items:,} items (SQLite online store, `push_latest`); model: "
            "default `StudentConfig()` student (seq_len 100), one torch thread per request.",
            "",
            "| candidates | concurrency | HTTP p50 (ms) | HTTP p99 (ms) | requests/s |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {n} | {c} | {s['p50']:.2f} | {s['p99']:.2f} | {s['rps']:.0f} |" for n, c, s in rows]
        lines += ["", "In process, concurrency 1 (same store, same model, same encoder):", "",
                  "| candidates | ctrflow path p50 / p99 (ms) | (a) one at a time p50 / p99 (ms) | "
                  "(b) Feast read p50 / p99 (ms) | vs (a) | vs (b) |", "|---|---|---|---|---|---|"]
        for n, r in refs:
            o, a, b = r["ours"], r["one_at_a_time"], r["feast"]
            lines.append(f"| {n} | {o['p50']:.2f} / {o['p99']:.2f} | {a['p50']:.2f} / {a['p99']:.2f} | "
                         f"{b['p50']:.2f} / {b['p99']:.2f} | {a['p50'] / o['p50']:.1f}x | "
                         f"{b['p50'] / o['p50']:.1f}x |")
        lines.append("")
        with args.out.open("a") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
