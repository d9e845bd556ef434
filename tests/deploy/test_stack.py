"""`actionstream up`: the whole local stack starts, says where it listens, and stops leaving no process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from streams.broker import free_port
from streams.errors import ConfigError
from streams.stack import prometheus_config, reap_stale, write_prometheus_files

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.split(") ", 1)[1].startswith("Z")


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in proc.joinpath("cmdline").read_bytes().decode("utf-8", "replace"):
                    out.append(int(proc.name))
            except OSError:
                pass
    return [p for p in out if p != os.getpid() and _alive(p)]


def test_generated_prometheus_config_points_at_real_files(tmp_path: Path) -> None:
    config_path = write_prometheus_files(tmp_path, ["127.0.0.1:7001", "127.0.0.1:7002"], port=9999,
                                         scrape_interval_s=2)
    config = yaml.safe_load(config_path.read_text())
    assert config["global"]["scrape_interval"] == "2s"
    rules = config["rule_files"]
    assert len(rules) == 1 and list(Path(rules[0]).parent.glob("*.rules.yml"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (targets_file,) = jobs["actionstream-worker"]["file_sd_configs"][0]["files"]
    targets = json.loads(Path(targets_file).read_text())
    assert [t["targets"] for t in targets] == [["127.0.0.1:7001"], ["127.0.0.1:7002"]]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    assert prometheus_config(tmp_path / "t.json")["global"]["external_labels"] == {"platform": "actionstream"}
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_reap_stale_stops_only_the_children_it_recorded(tmp_path: Path) -> None:
    # a fake leftover worker (its command line carries the marker) and an unrelated process (no marker)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "streams.cli worker"],
                                start_new_session=True)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        while b"streams.cli" not in Path(f"/proc/{leftover.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until the child has exec'd
        dead_owner = subprocess.Popen(["true"])
        dead_owner.wait()
        (tmp_path / "stack.json").write_text(json.dumps({"pid": dead_owner.pid, "children": [
            {"name": "worker-0", "pid": leftover.pid, "marker": "streams.cli worker"},
            {"name": "prometheus", "pid": unrelated.pid, "marker": "prometheus"}]}))
        assert reap_stale(tmp_path) == [leftover.pid]
        assert leftover.wait(10) is not None
        assert unrelated.poll() is None
        assert not (tmp_path / "stack.json").exists()
    finally:
        for p in (leftover, unrelated):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_reap_stale_refuses_when_the_stack_is_running(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "actionstream", "up"])
    try:
        while b"actionstream" not in Path(f"/proc/{owner.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until the child has exec'd
        (tmp_path / "stack.json").write_text(json.dumps({"pid": owner.pid, "children": []}))
        with pytest.raises(ConfigError, match="already running"):
            reap_stale(tmp_path)
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.ops
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed (make ops-deps)")
def test_up_starts_everything_and_stops_without_strays(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    kafka_port, ctrl_port, worker_port, prom_port = (free_port() for _ in range(4))
    cmd = [sys.executable, "-m", "streams.cli", "up", "--state-dir", str(state), "--kafka-port", str(kafka_port),
           "--controller-port", str(ctrl_port), "--worker-port", str(worker_port),
           "--prometheus-port", str(prom_port), "--partitions", "2", "--logs", "files",
           "--no-models"]  # model bootstrap: tests/deploy/test_stack_models.py
    up = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 240
        status = ""
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("actionstream up:"):
                status = line
                break
        assert status, "no status line; output:\n" + "".join(lines[-60:])
        assert f"Kafka 127.0.0.1:{kafka_port}" in status
        assert f"worker-0 http://127.0.0.1:{worker_port}" in status
        assert f"Prometheus http://127.0.0.1:{prom_port}" in status
        assert "models none loaded (score answers 503)" in status
        assert not (state / "models").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=5) as r:
            assert r.status == 200
        recorded = json.loads((state / "stack.json").read_text())
        children = {c["name"]: c["pid"] for c in recorded["children"]}
        assert set(children) == {"kafka", "worker-0", "prometheus"}
        assert all(_alive(p) for p in children.values())
        assert (state / "stack.pid").read_text().strip() == str(up.pid)
        assert (state / "logs" / "worker-0.log").stat().st_size > 0

        up.send_signal(signal.SIGTERM)  # what `make down` sends
        rest, _ = up.communicate(timeout=120)
        lines.append(rest)
        assert up.returncode == 0, "".join(lines[-60:])
        assert "stopped: no process of this stack is left" in rest
        assert not [p for p in children.values() if _alive(p)]
        assert not _pids_mentioning(str(state)), "a process still refers to the stack's state dir"
        assert not (state / "stack.pid").exists() and not (state / "stack.json").exists()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        for pid in _pids_mentioning(str(state)):
            os.killpg(pid, signal.SIGKILL)
