"""The embedded Apache Kafka launcher: `actionstream broker` as a subprocess, SIGTERM, restart keeps data.

One test, two broker starts (each costs seconds): the first through the CLI in a subprocess, the second
through the library on the same data dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from streams.broker import EmbeddedKafka, free_port
from streams.errors import BrokerError
from streams.settings import BrokerSettings
from tests.streams.harness import read_topic

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed within {timeout_s}s; got {lines}")


def test_broker_cli_answers_stops_on_sigterm_and_restart_keeps_data(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    data = tmp_path / "kafka"
    bootstrap = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streams.cli", "broker", "--port", str(port), "--controller-port", str(controller),
           "--data-dir", str(data)]
    env = {**os.environ, "ACTIONSTREAM_BROKER_HEAP": "384m"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(proc, f"Apache Kafka ready at {bootstrap}", 120)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(10):
            producer.send("persisted", key=b"u1", value=f"v{i}".encode())
        producer.flush(30)
        producer.close()
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    broker = EmbeddedKafka(BrokerSettings(broker_data_dir=data, broker_port=port, broker_controller_port=controller,
                                          broker_heap="384m"))
    with broker:
        assert [r.value for r in read_topic(broker.bootstrap, "persisted")] == [f"v{i}".encode() for i in range(10)]
        with pytest.raises(BrokerError, match="already in use"):  # a second broker on the same ports
            EmbeddedKafka(broker.settings).start()
    assert broker.proc is None


def test_cluster_id_never_looks_like_an_option(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A base64url id starting with '-' made StorageTool's parser fail 1 broker start in 64 (seen in CI)."""
    from streams.broker import EmbeddedKafka, free_port
    from streams.settings import BrokerSettings

    broker = EmbeddedKafka(BrokerSettings(broker_data_dir=tmp_path, broker_port=free_port(),
                                          broker_controller_port=free_port()))
    ids = [broker._cluster_id() for _ in range(5000)]
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    # none of these is bound by anyone, so the OS is free to offer the same port again: free_port must not
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
