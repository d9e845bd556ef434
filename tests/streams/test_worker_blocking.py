"""Event-loop safety: under load, Faust's blocking detector stays quiet (issue 3 acceptance).

The worker runs with ``ACTIONSTREAM_BLOCKING_TIMEOUT_S=1`` (Faust's SIGALRM detector logs
"Blocking detected" with the stack whenever the loop is held that long; with the short session timeouts
we use, a loop blocked ~1 s would cost the group membership) while it applies a burst of events with the
realtime TransAct encoder on. A control worker with an absurdly small timeout (5 ms) must trip the
detector on the same kind of load: that proves the detector is armed, so the quiet run means something.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from streams.events import encode_event
from streams.settings import DEFAULT_ACTIONS
from tests.streams.harness import (
    WorkerProc,
    create_topics,
    event_keys,
    expected_state,
    make_events,
    produce,
    wait_for_state,
    wait_until,
)
from transact.model import TransAct, TransActConfig, save_checkpoint

pytestmark = pytest.mark.kafka

PARTITIONS = 4
MARK = "Blocking detected"


def _realtime_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = TransActConfig(early_fusion=False, item_dim=32, hash_buckets=1001)
    save_checkpoint(path, TransAct(cfg), cfg, {"actions": list(DEFAULT_ACTIONS), "model_version": "rt-blocking"})
    return path


def _run(kafka, tmp: Path, name: str, timeout_s: str, n_events: int, env: dict[str, str],  # type: ignore[no-untyped-def]
         control: bool) -> str:
    suffix = os.urandom(4).hex()
    topic, dlq = f"blk-{name}-{suffix}", f"blk-dlq-{name}-{suffix}"
    create_topics(kafka.bootstrap, [topic, dlq], PARTITIONS)
    worker = WorkerProc(kafka.bootstrap, tmp / name, topic=topic, dlq=dlq, worker_id=f"blk-{name}-{suffix}",
                        partitions=PARTITIONS, env={"ACTIONSTREAM_BLOCKING_TIMEOUT_S": timeout_s, **env}).start()
    try:
        worker.wait_ready(90)
        events = make_events(n_events, 300, seed=3)
        produce(kafka.bootstrap, topic, [encode_event(e) for e in events], keys=event_keys(events))
        if control:  # the detector raises inside whatever it interrupts: only wait for its log line
            wait_until(lambda: MARK in worker.log_path.read_text(errors="replace") or not worker.alive(), 60,
                       "the control worker's blocking detector to fire")
        else:
            wait_for_state(kafka.bootstrap, worker.changelog_topic, expected_state(events), 120)
            assert worker.alive(), worker.log_tail()
        # only the running phase counts: closing the RocksDB stores at shutdown may hold the loop > 1 s
        return worker.log_path.read_text(errors="replace")
    finally:
        worker.stop()


def test_blocking_detector_stays_quiet_under_load(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = _realtime_checkpoint(tmp_path / "realtime.pt")
    env = {"ACTIONSTREAM_REALTIME_CHECKPOINT": str(ckpt)}
    control = _run(kafka, tmp_path, "control", "0.005", 3_000, env, control=True)
    assert MARK in control, "control: a 5 ms detector never fired, so the detector is not armed"
    quiet = _run(kafka, tmp_path, "quiet", "1.0", 20_000, env, control=False)
    assert MARK not in quiet, quiet[quiet.index(MARK) - 2000: quiet.index(MARK) + 3000]
