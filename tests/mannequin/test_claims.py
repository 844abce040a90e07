"""Claims let benchmark workers on one machine share a run: a live holder keeps its unit,
a dead one's claim is taken over, and nobody removes a claim that is not their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mannequin.claims import Claims, process_start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def other_holder(tmp_path):
    """Another process that claims ``unit`` in ``tmp_path/claims`` and keeps running."""
    script = ("import sys, time; from mannequin.claims import Claims; "
              "assert Claims(sys.argv[1]).claim(sys.argv[2]); print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "claims"), "unit"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_live_holder_keeps_its_unit_and_a_dead_ones_claim_is_taken_over(tmp_path, other_holder):
    claims = Claims(tmp_path / "claims")
    assert not claims.claim("unit")
    assert claims.holder("unit")["pid"] == other_holder.pid
    claims.release("unit")  # not ours: left alone
    assert json.loads((tmp_path / "claims" / "unit.claim").read_text())["pid"] == other_holder.pid
    assert claims.claim("another unit")  # other units are free
    other_holder.kill()
    other_holder.wait()
    assert claims.holder("unit") is None
    assert claims.claim("unit")  # stale: its process is gone
    assert json.loads((tmp_path / "claims" / "unit.claim").read_text())["pid"] == os.getpid()


def test_own_claims_are_held_again_and_released(tmp_path):
    claims = Claims(tmp_path)
    assert claims.claim("unit") and claims.claim("unit")
    assert claims.holder("unit") is None  # this process is not "another" holder
    claims.release("unit")
    assert not (tmp_path / "unit.claim").exists()
    claims.release("unit")  # nothing to release: no error


@pytest.mark.skipif(process_start(os.getpid()) is None, reason="process start times are read from /proc")
def test_a_reused_pid_does_not_keep_a_dead_claim(tmp_path):
    """The claimer died and the pid now belongs to another process (here: this one, started later)."""
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "1"}
    (tmp_path / "unit.claim").write_text(json.dumps(holder))
    assert Claims(tmp_path).holder("unit") is None
    assert Claims(tmp_path).claim("unit")
