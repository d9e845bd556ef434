"""bench.procs: helpers for the benchmark's child processes."""

from __future__ import annotations

from pathlib import Path


def test_keep_logs_copies_recent_log_tails(tmp_path: Path) -> None:
    """A failed section's process logs survive the scratch dir: recent *.log files, last max_bytes each."""
    import os
    import time

    from bench.procs import keep_logs

    scratch = tmp_path / "scratch"
    (scratch / "bench-abc").mkdir(parents=True)
    old = scratch / "bench-abc" / "old.log"
    old.write_text("before the section\n")
    os.utime(old, (time.time() - 100, time.time() - 100))
    (scratch / "bench-abc" / "w0.log").write_bytes(b"x" * 50 + b"Heartbeat failed\n")
    (scratch / "bench-abc" / "data.bin").write_bytes(b"not a log")
    kept = keep_logs(scratch, tmp_path / "out" / "failed-platform", since=time.time() - 10, max_bytes=20)
    assert kept == 1
    files = list((tmp_path / "out" / "failed-platform").iterdir())
    assert [f.name for f in files] == ["bench-abc__w0.log"]
    assert files[0].read_bytes() == (b"x" * 50 + b"Heartbeat failed\n")[-20:]
