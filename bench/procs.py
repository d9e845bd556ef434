"""Subprocess helpers: start a Python module as its own process group, wait for a file, stop it, RSS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Proc", "keep_logs", "rss_bytes", "start_module", "wait_for_json"]


class Proc:
    """A child process in its own session; ``stop()`` sends SIGTERM then SIGKILL; logs go to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)

    def dump_stacks(self) -> bool:
        """Ask the process for its thread and asyncio task stacks (SIGUSR1: a Faust/mode worker writes them,
        with every loop's tasks, to its log). False if it is gone."""
        if self.popen.poll() is not None:
            return False
        try:
            os.kill(self.popen.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return False
        return True

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_module(module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen([sys.executable, "-m", module, *args], stdout=fh, stderr=subprocess.STDOUT,
                             cwd=REPO_ROOT, env=full_env, start_new_session=True)
    fh.close()
    return Proc(popen, log)


def wait_for_json(path: Path, proc: Proc, timeout: float) -> dict[str, float]:
    """Wait until ``proc`` writes ``path``; raise RuntimeError (with the log tail) if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]
        if not proc.alive():
            raise RuntimeError(f"process exited with {proc.popen.returncode} before writing {path.name}:\n{proc.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"no result after {timeout:.0f}s:\n{proc.tail()}")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (Linux /proc), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def keep_logs(scratch: Path, dest: Path, *, since: float, max_bytes: int = 2 << 20) -> int:
    """Copy the ``*.log`` files under ``scratch`` modified since ``since`` (epoch s) to ``dest`` (the last
    ``max_bytes`` of each): the bench deletes its scratch dir at the end, and a failed section's worker and
    broker logs are what explain it. Returns the number of files kept."""
    kept = 0
    for path in sorted(scratch.rglob("*.log")):
        try:
            if not path.is_file() or path.stat().st_mtime < since:
                continue
            with path.open("rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - max_bytes))
                tail = fh.read()
        except OSError:
            continue
        target = dest / "__".join(path.relative_to(scratch).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tail)
        kept += 1
    return kept
