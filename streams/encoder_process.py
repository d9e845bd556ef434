"""The realtime TransAct encoder in a child process, so the stream keeps the worker's GIL and the CPU's priority.

In the worker's own process (a thread beside the event loop), encoding shared the GIL with the loop: the
Python parts of decoding and batch building, and every torch call's entry and exit, waited for, and held
up, the sequence path. Measured in ``make bench`` (realtime section, 50% of max rate): with the encoder
thread on, event -> sequence stored p99 went from tens of ms to 0.24-2.5 s across runs.

:class:`EncoderProcess` keeps the :class:`transact.inference.Encoder` interface the worker uses
(``encode_blobs``, ``model_version``, ``out_dim``, ``cfg``, ``vocab``) and runs the work in a child:

* started with the ``spawn`` method (never ``fork``: the worker has an event loop, threads and Kafka
  sockets), it loads the same checkpoint and item vectors, sets torch's threads, and lowers its own CPU
  priority by ``nice`` (``ACTIONSTREAM_ENCODER_NICE``, default 10): when both want a core, the stream wins,
  and the encoder gets every cycle the stream leaves idle;
* one request at a time over a pipe: the stored sequence blobs go in (a few KB per user; decoding
  happens in the child), float32 vectors come back. The worker's encoder thread waits on the pipe
  without holding the GIL;
* if the child dies (killed, out of memory), the next call logs it, starts a new one and retries the
  batch once; a child whose parent is gone (even after ``kill -9``) sees the pipe close and exits;
* ``close()`` stops it (worker shutdown, or a model reload that replaced it).

The parent also holds the model (loaded first, to check the checkpoint against the worker's vocabulary
and item vectors at start-up, where a bad config must fail): a few MB of weights, not used for compute.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EncoderProcess"]

log = logging.getLogger(__name__)


def _serve(conn: Connection, checkpoint: str, items_path: str | None, threads: int, nice: int) -> None:
    """The child: load the encoder, then answer ``(blobs, request_ts)`` with ``("ok", vectors)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker stops us
    if nice:
        os.nice(nice)
    import torch

    from streams.models import load_items
    from transact.inference import Encoder

    torch.set_num_threads(threads)
    try:
        try:
            encoder = Encoder.from_checkpoint(checkpoint, load_items(Path(items_path) if items_path else None),
                                              threads=threads)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("ready", encoder.model_version))
        while (msg := conn.recv()) is not None:
            blobs, request_ts = msg
            reply: tuple[str, Any]
            try:
                reply = ("ok", encoder.encode_blobs(blobs, request_ts))
            except Exception as exc:  # noqa: BLE001 - one bad batch; the parent raises it for that batch
                reply = ("error", f"{type(exc).__name__}: {exc}")
            conn.send(reply)
    except (EOFError, OSError):  # the worker is gone (closed, stopped or killed): nothing left to serve
        return


class EncoderProcess:
    """A :class:`transact.inference.Encoder` whose ``encode_blobs`` runs in a niced child process.

    Args:
        encoder: the checkpoint loaded in the worker (properties and start-up checks; not used for compute).
        checkpoint / items_path: what the child loads (the same files).
        threads: torch threads in the child. nice: added to the child's niceness (0 = same priority).
        start_timeout_s: how long a child may take to load before a call fails.
    """

    def __init__(self, encoder: Any, checkpoint: Path, items_path: Path | None, *, threads: int = 1,
                 nice: int = 10, start_timeout_s: float = 120.0) -> None:
        self.local = encoder
        self.checkpoint, self.items_path = Path(checkpoint), items_path
        self.threads, self.nice, self.start_timeout_s = threads, nice, start_timeout_s
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._ready = False
        self.restarts = 0
        self._start()

    # the Encoder interface the worker reads
    @property
    def model_version(self) -> str:
        return str(self.local.model_version)

    @property
    def out_dim(self) -> int:
        return int(self.local.out_dim)

    @property
    def cfg(self) -> Any:
        return self.local.cfg

    @property
    def vocab(self) -> dict[str, Any]:
        return dict(self.local.vocab)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, name="actionstream-encoder", daemon=True,
                                 args=(child, str(self.checkpoint), None if self.items_path is None else
                                       str(self.items_path), self.threads, self.nice))
        self._proc.start()
        child.close()
        self._conn, self._ready = parent, False
        log.info("realtime encoder process %d starting (model %s, %d torch threads, nice +%d)", self._proc.pid,
                 self.model_version, self.threads, self.nice)

    def _wait_ready(self) -> None:
        assert self._conn is not None
        if not self._conn.poll(self.start_timeout_s):
            raise RuntimeError(f"the realtime encoder process did not load {self.checkpoint} within "
                               f"{self.start_timeout_s:.0f} s")
        status, detail = self._conn.recv()
        if status != "ready":
            raise RuntimeError(f"the realtime encoder process could not load {self.checkpoint}: {detail}")
        self._ready = True

    def _call(self, blobs: Sequence[bytes], request_ts: int) -> np.ndarray:
        if not self._ready:
            self._wait_ready()
        assert self._conn is not None
        self._conn.send((list(blobs), int(request_ts)))
        status, detail = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"realtime encoder process: {detail}")
        return detail  # type: ignore[no-any-return]

    def encode_blobs(self, blobs: Sequence[bytes], request_ts: int) -> np.ndarray:
        """U stored sequence blobs -> (U, out_dim) float32, computed in the child (restarted once if dead)."""
        if not blobs:
            return np.zeros((0, self.out_dim), np.float32)
        with self._lock:
            try:
                return self._call(blobs, request_ts)
            except (EOFError, OSError) as exc:  # the child died: start another, retry this batch once
                code = None if self._proc is None else self._proc.exitcode
                log.warning("realtime encoder process died (%s, exit code %s); starting a new one", exc, code)
                self._stop_child(timeout=1.0)
                self.restarts += 1
                self._start()
                return self._call(blobs, request_ts)

    def _stop_child(self, timeout: float) -> None:
        conn, proc = self._conn, self._proc
        self._conn, self._proc, self._ready = None, None, False
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (waits for its current batch up to ``timeout`` seconds, then kills it)."""
        with self._lock:
            pid = self.pid
            t0 = time.monotonic()
            self._stop_child(timeout)
            if pid is not None:
                log.info("realtime encoder process %d stopped in %.2f s", pid, time.monotonic() - t0)
