"""Exclusive locks on named resources of a home, e.g. one feature job's checkpoint and warehouse files.

One lock per resource, not per home: a running ``features stream`` holds only its own job's lock, so
training or promotion (which lock other resources, e.g. ``registry``) never wait for it. A lock is an
``fcntl.flock`` on ``<home>/locks/<name>.lock``: the kernel releases it when the holder exits, even on
kill -9, so a crash never leaves a stale lock behind. The holder writes its pid and command line into
the file so that a refused writer can say who holds it. Within one process the lock is re-entrant
(a run that resets, then builds, takes it twice).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.settings import Settings

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_COMMAND_CHARS = 200


class LockHeld(RuntimeError):
    """Another process holds the resource."""


@dataclass
class _Held:
    fd: int
    depth: int


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def lock_path(settings: Settings, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad lock name {name!r}: letters, digits, '.', '_', '-' only")
    return settings.home_dir / "locks" / f"{name}.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {int(info['pid'])} ({str(info['command'])[:MAX_COMMAND_CHARS]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _command() -> str:
    args = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return " ".join(args)[:MAX_COMMAND_CHARS]


@contextmanager
def resource_lock(settings: Settings, name: str) -> Iterator[Path]:
    """Hold resource ``name`` of ``settings``' home exclusively for the duration of the block.

    Raises LockHeld at once (no waiting) when another process holds it; the message names the
    holder's pid and command. Yields the lock file's path.
    """
    path = lock_path(settings, name)
    with _guard:
        held = _held.get(path)
        if held is not None:
            held.depth += 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(
                    f"{name} of {settings.home_dir} is in use by {_holder(path)}; "
                    "wait for it to finish or stop it"
                ) from None
            os.ftruncate(fd, 0)
            info = {"pid": os.getpid(), "command": _command(), "since": round(time.time(), 3)}
            os.pwrite(fd, json.dumps(info).encode(), 0)
            _held[path] = _Held(fd, 1)
    try:
        yield path
    finally:
        with _guard:
            held = _held[path]
            held.depth -= 1
            if held.depth == 0:
                del _held[path]
                os.ftruncate(held.fd, 0)  # a stale holder line would mislead the next refused writer
                os.close(held.fd)  # closing the descriptor releases the flock
