"""Registry writers take the registry's flock: another process's writer waits, then names the holder."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.locks import LockHeld
from training import registry
from training.registry import read_champion_pointer

HOLD = """
import sys, time
from pipelines.locks import resource_lock
from pipelines.settings import Settings
with resource_lock(Settings(home=sys.argv[1]), "registry"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_writer_waits_for_the_registry_lock_then_names_the_holder(trained, monkeypatch) -> None:
    settings, v = trained
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(settings.home)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(registry, "LOCK_WAIT_S", 0.3)
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            registry.promote(settings, v.good, force=True, reason="while another writer holds the lock")
        assert read_champion_pointer(settings) is None  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # The kernel freed the killed holder's lock: the same promotion goes through.
    registry.promote(settings, v.good, force=True, reason="after the holder died")
    assert read_champion_pointer(settings).version == v.good
