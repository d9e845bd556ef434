"""streams.encoder_process: the realtime encoder in a niced child process gives the in-process vectors,
survives the child's death, stops on close, and never outlives a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from streams.encoder_process import EncoderProcess
from streams.sequence import encode
from transact.inference import Encoder
from transact.model import TransAct, TransActConfig, save_checkpoint

REQ = 1_700_000_000_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "rt.pt"
    model = TransAct(TransActConfig(early_fusion=False, seq_len=20, hash_buckets=1009))
    save_checkpoint(path, model, model.cfg, {"model_version": "rt-test"})
    return path


def blobs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode([(REQ - 1_000 - k * 60_000, k, int(rng.integers(1, 8)), 0, 0, f"i{rng.integers(0, 50)}")
                    for k in range(int(rng.integers(0, 25)))]) for _ in range(n)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(") ")[1][0] != "Z"


def wait_dead(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_child_gives_the_in_process_vectors_and_is_niced(checkpoint: Path) -> None:
    local = Encoder.from_checkpoint(checkpoint, None)
    proc = EncoderProcess(local, checkpoint, None, threads=1, nice=5)
    try:
        assert proc.model_version == "rt-test" and proc.out_dim == local.out_dim
        bs = blobs(40)
        got = proc.encode_blobs(bs, REQ)
        assert got.shape == (40, local.out_dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, local.encode_blobs(bs, REQ), rtol=1e-5, atol=1e-6)
        assert proc.pid is not None and proc.pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 5
        assert proc.encode_blobs([], REQ).shape == (0, local.out_dim)
    finally:
        pid = proc.pid
        proc.close()
    assert pid is not None and wait_dead(pid, 5)


def test_a_dead_child_is_replaced_and_the_batch_retried(checkpoint: Path) -> None:
    local = Encoder.from_checkpoint(checkpoint, None)
    proc = EncoderProcess(local, checkpoint, None, threads=1, nice=0)
    try:
        bs = blobs(10, seed=1)
        first = proc.encode_blobs(bs, REQ)
        old = proc.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        assert wait_dead(old)
        again = proc.encode_blobs(bs, REQ)  # the dead pipe is noticed, a new child answers the same batch
        np.testing.assert_array_equal(again, first)
        assert proc.restarts == 1 and proc.pid not in (None, old)
    finally:
        proc.close()


def test_a_child_that_cannot_load_reports_why(tmp_path: Path, checkpoint: Path) -> None:
    local = Encoder.from_checkpoint(checkpoint, None)
    bad = tmp_path / "gone.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = EncoderProcess(local, bad, None, threads=1, nice=0)
    try:
        with pytest.raises(RuntimeError, match="could not load"):
            proc.encode_blobs(blobs(2), REQ)
    finally:
        proc.close()


def test_the_child_exits_when_its_worker_is_killed(tmp_path: Path, checkpoint: Path) -> None:
    """kill -9 of the worker closes its end of the pipe: the child sees EOF and exits (no orphans)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from streams.encoder_process import EncoderProcess\n"
        "from transact.inference import Encoder\n"
        "if __name__ == '__main__':\n"
        "    ck = Path(sys.argv[1])\n"
        "    p = EncoderProcess(Encoder.from_checkpoint(ck, None), ck, None, threads=1, nice=0)\n"
        "    p.encode_blobs([b''], 1)\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), *sys.path]))
    parent = subprocess.Popen([sys.executable, str(script), str(checkpoint)], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(10)
        assert wait_dead(child), "the encoder process outlived its killed worker"
    finally:
        parent.kill()
