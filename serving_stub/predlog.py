"""The prediction log producer: every scored request goes to ``<prefix>.served``, off the request path.

A request only puts its record on a bounded in-process queue (never waits); one background thread
hands records to a kafka-python producer, which batches them. A full queue or an unreachable broker
drops records rather than slowing scoring; drops and send errors are counted for ``/metrics``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from pipelines.kafka import ensure_topics, make_producer
from pipelines.served import SERVED_TOPIC, ServedRecord
from pipelines.settings import Settings

_LOG = logging.getLogger(__name__)
QUEUE_RECORDS = 10_000
_STOP = object()


class PredictionLog:
    def __init__(self, settings: Settings, bootstrap: str,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.topic = settings.topic(SERVED_TOPIC)
        self.bootstrap = bootstrap
        self.partitions = settings.topic_partitions
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_RECORDS)
        self._on_event = on_event or (lambda kind: None)  # "sent", "dropped", "error"
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._pending = 0  # queued and not yet flushed to Kafka
        self._done = threading.Condition()

    def start(self) -> None:
        self._thread.start()

    def log(self, record: ServedRecord) -> None:
        """Queue a record for the topic; drops it (counted) when the queue is full."""
        with self._done:
            self._pending += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._finished(1)
            self._on_event("dropped")

    def _finished(self, n: int) -> None:
        with self._done:
            self._pending -= n
            self._done.notify_all()

    def _run(self) -> None:
        producer = None
        handled = 0
        while True:
            record = self._queue.get()
            if record is _STOP:
                break
            try:
                if producer is None:
                    ensure_topics(self.bootstrap, [self.topic], self.partitions)
                    producer = make_producer(self.bootstrap, client_id="ctrflow-serving", linger_ms=20)
                producer.send(self.topic, value=record.to_json(), key=record.request_id.encode()
                              ).add_callback(lambda _: self._on_event("sent")
                              ).add_errback(lambda exc: self._error(exc))
            except Exception as exc:  # broker down, topic creation refused: drop, count, keep going
                self._error(exc)
            handled += 1
            if self._queue.empty():
                if producer is not None:
                    producer.flush(timeout=10)
                self._finished(handled)
                handled = 0
        if producer is not None:
            producer.flush(timeout=10)
            producer.close(timeout=10)

    def _error(self, exc: BaseException) -> None:
        _LOG.warning("prediction log record dropped: %s", exc)
        self._on_event("error")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record was handed to Kafka and flushed (tests, shutdown)."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout_s)

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=15)
