"""`actionstream up`: the whole local platform in one command, stopped together with Ctrl-C.

First, when no checkpoints are configured, trains small real models once into ``<state-dir>/models/``
(:mod:`streams.stack_models`: simulated history of the demo's world, a PinnerFormer, an early-fusion hybrid
TransAct ranking model and a candidate-free realtime TransAct; ~1 minute on 2 cores; reused by later runs,
``--retrain-models`` / ``--no-models``) and hands them to the workers (``ACTIONSTREAM_TRANSACT_CHECKPOINT``,
``ACTIONSTREAM_REALTIME_CHECKPOINT``, ``ACTIONSTREAM_ITEMS_PATH``). Checkpoints set in the environment are
used as they are.

Then starts, in order: the embedded Apache Kafka broker (:class:`streams.broker.EmbeddedKafka`), the platform
topics (:func:`streams.topics.ensure_topics`), N stream workers (``actionstream worker`` subprocesses, each
with its own HTTP port and RocksDB dir, all in one consumer group) and a Prometheus server on loopback
scraping them, configured from ``deploy/prometheus/prometheus.yml`` and its alert rules. It then prints one
status line saying where everything listens and streams the children's logs, prefixed with their name
(``--logs files`` writes them to ``<state-dir>/logs/`` only). Ctrl-C, SIGTERM or ``make down`` stops
everything in reverse order (Prometheus, workers with a clean Faust shutdown, the broker); a child that
dies on its own stops the stack with exit code 1.

Files under ``--state-dir`` (default ``.actionstream``): ``kafka/`` (broker data, ``broker.log``),
``models/`` (bootstrapped models), ``worker-<port>/`` (RocksDB), ``archive/`` (event archive), ``prometheus/`` (generated config, TSDB),
``logs/``, ``stack.pid`` (for ``make down``) and ``stack.json`` (addresses and pids, read by
``actionstream demo``). A stack killed with SIGKILL leaves its children behind: the next ``up`` finds them
in ``stack.json`` and stops them first.

Not for production: there, Kafka is an existing cluster and workers run as a StatefulSet (deploy/k8s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from streams.broker import REPO_ROOT, EmbeddedKafka
from streams.errors import ActionstreamError, BrokerError, ConfigError
from streams.settings import BrokerSettings, KafkaSettings

HELP = "run the whole local platform: Kafka, topics, worker(s), Prometheus"

log = logging.getLogger("streams.stack")

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
WORKER_JOB = "actionstream-worker"


class StackSettings(BrokerSettings, KafkaSettings):
    """`actionstream up`: broker ports, worker count and ports, Prometheus (env ``ACTIONSTREAM_STACK_*``)."""

    stack_dir: Path = Path(".actionstream")
    stack_workers: int = Field(1, ge=1, le=64, description="worker processes (at most the partition count)")
    stack_worker_port: int = Field(6066, ge=1, le=65535, description="HTTP port of worker 0; worker i uses +i")
    stack_prometheus: bool = True
    stack_prometheus_port: int = Field(9090, ge=1, le=65535)
    stack_scrape_interval_s: int = Field(5, ge=1, le=300)
    stack_ready_timeout_s: float = Field(180.0, gt=0)
    stack_logs: str = Field("prefix", pattern="^(prefix|files)$")
    stack_models: bool = Field(True, description="train small models into <stack dir>/models when no "
                                                  "checkpoint is configured (once; reused afterwards)")
    stack_retrain_models: bool = False
    # the worker's own variables (WorkerSettings): when set, used as they are and nothing is trained
    transact_checkpoint: Path | None = None
    realtime_checkpoint: Path | None = None
    items_path: Path | None = None

    @field_validator("transact_checkpoint", "realtime_checkpoint", "items_path", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v


# ------------------------------------------------------------------------------------------- prometheus

def prometheus_config(targets_file: Path, *, rules_dir: Path = PROMETHEUS_DIR / "rules",
                      self_address: str = "127.0.0.1:9090", scrape_interval_s: int = 5,
                      template: Path = PROMETHEUS_DIR / "prometheus.yml") -> dict[str, Any]:
    """The deploy/ template with absolute rule and target paths and a local scrape interval."""
    config: dict[str, Any] = yaml.safe_load(template.read_text())
    config["global"]["scrape_interval"] = f"{scrape_interval_s}s"
    config["global"]["evaluation_interval"] = f"{scrape_interval_s}s"
    config["rule_files"] = [str(rules_dir.resolve() / "*.rules.yml")]
    for job in config["scrape_configs"]:
        if job["job_name"] == WORKER_JOB:
            job["file_sd_configs"] = [{"files": [str(targets_file.resolve())], "refresh_interval": "5s"}]
            job["scrape_timeout"] = f"{max(1, scrape_interval_s - 1)}s"
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [self_address]}]
    return config


def write_prometheus_files(directory: Path, worker_addresses: Sequence[str], *, port: int,
                           scrape_interval_s: int = 5) -> Path:
    """Write ``prometheus.yml`` and ``targets/workers.json`` under ``directory``; return the config path."""
    targets = directory / "targets" / "workers.json"
    targets.parent.mkdir(parents=True, exist_ok=True)
    targets.write_text(json.dumps([{"targets": [addr], "labels": {"worker": f"worker-{i}"}}
                                   for i, addr in enumerate(worker_addresses)], indent=2))
    config_path = directory / "prometheus.yml"
    config = prometheus_config(targets, self_address=f"127.0.0.1:{port}", scrape_interval_s=scrape_interval_s)
    config_path.write_text("# generated by `actionstream up` from deploy/prometheus/prometheus.yml\n"
                           + yaml.safe_dump(config, sort_keys=False))
    return config_path


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise ConfigError("the `prometheus` binary is not on PATH: install it with `make ops-deps` "
                          "(Debian: apt-get install -y prometheus) or run `actionstream up --no-prometheus`")
    return found


def prometheus_command(config: Path, data_dir: Path, port: int) -> list[str]:
    return [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d",
            "--web.enable-lifecycle", "--log.level=warn"]


# ------------------------------------------------------------------------------------------- children

def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we built
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Child:
    """A subprocess of the stack in its own process group, its output copied to a log file (and stdout)."""

    name: str
    cmd: list[str]
    log_path: Path
    echo: bool
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{self.name}", daemon=True)
        self._pump.start()
        return self

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        prefix = f"{self.name:<11}| "
        with open(self.log_path, "ab") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                if self.echo:
                    sys.stdout.write(prefix + raw.decode("utf-8", "replace"))
                    sys.stdout.flush()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> int | None:
        """SIGTERM the process group, SIGKILL after ``timeout``; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killing it", self.name, timeout)
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        _signal_group(self.proc.pid, signal.SIGKILL)  # anything it left in its group
        if self._pump is not None:
            self._pump.join(5)
        return self.proc.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def reap_stale(stack_dir: Path) -> list[int]:
    """Stop children a SIGKILLed stack left behind (pids from ``stack.json`` whose command line still matches).

    Returns the pids that were signalled. Raises :class:`ConfigError` if that stack is still running.
    """
    state_file = stack_dir / "stack.json"
    if not state_file.exists():
        return []
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        return []
    owner = int(state.get("pid", 0))
    if owner and owner != os.getpid() and _pid_alive(owner) and "actionstream" in _cmdline(owner):
        raise ConfigError(f"a stack is already running from {stack_dir} (pid {owner}): stop it with "
                          f"`make down` / `kill {owner}` or use another --state-dir")
    reaped = []
    for child in state.get("children", []):
        pid, marker = int(child["pid"]), str(child["marker"])
        if _pid_alive(pid) and marker in _cmdline(pid):
            log.warning("stopping %s (pid %d) left behind by a previous stack", child["name"], pid)
            _signal_group(pid, signal.SIGTERM)
            reaped.append(pid)
    deadline = time.monotonic() + 30
    while any(_pid_alive(p) and not _is_zombie(p) for p in reaped) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in reaped:
        _signal_group(pid, signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    return reaped


# ------------------------------------------------------------------------------------------- stack

class Stack:
    """Broker, topics, workers and Prometheus for one local platform (see the module docstring)."""

    def __init__(self, settings: StackSettings, log_level: str = "INFO") -> None:
        self.settings = settings
        self.log_level = log_level
        self.dir = Path(settings.stack_dir).resolve()
        self.logs = self.dir / "logs"
        self.broker: EmbeddedKafka | None = None
        self.workers: list[Child] = []
        self.prometheus: Child | None = None
        self._stop = threading.Event()
        self._broker_pid: int | None = None
        self.models: dict[str, Any] = {}  # what the workers get (stack.json "models")
        self.loaded: dict[str, str] = {}  # model label -> version, from worker-0's /metrics once ready

    # addresses
    def worker_port(self, i: int) -> int:
        return self.settings.stack_worker_port + i

    def worker_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.worker_port(i)}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.stack_prometheus_port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.broker_host}:{self.settings.broker_port}"

    def request_stop(self) -> None:
        self._stop.set()

    def start(self) -> None:
        s = self.settings
        if s.stack_workers > s.partitions:
            raise ConfigError(f"--workers {s.stack_workers} > ACTIONSTREAM_PARTITIONS={s.partitions}: extra "
                              "workers would get no partition")
        self.dir.mkdir(parents=True, exist_ok=True)
        reap_stale(self.dir)
        (self.dir / "stack.pid").write_text(f"{os.getpid()}\n")
        self.logs.mkdir(parents=True, exist_ok=True)
        prom_bin = prometheus_binary() if s.stack_prometheus else None  # fail before starting anything
        model_env = self._prepare_models()
        if self._stop.is_set():
            raise KeyboardInterrupt

        broker_settings = BrokerSettings.load(**{k: getattr(s, k) for k in BrokerSettings.model_fields}
                                              | {"broker_data_dir": self.dir / "kafka"})
        log.info("starting Apache Kafka on %s (data %s)", self.bootstrap, broker_settings.broker_data_dir)
        self.broker = EmbeddedKafka(broker_settings).start()
        self._broker_pid = self.broker.proc.pid if self.broker.proc else None
        self._save_state()

        from streams.topics import ensure_topics
        kafka = KafkaSettings.load(**{k: getattr(s, k) for k in KafkaSettings.model_fields}
                                   | {"kafka_bootstrap_servers": self.bootstrap})
        for info in ensure_topics(kafka):
            log.info("topic %s: %s", info.name, info.status)

        env = dict(os.environ, ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
                   ACTIONSTREAM_PARTITIONS=str(s.partitions), PYTHONUNBUFFERED="1", **model_env)
        echo = s.stack_logs == "prefix"
        for i in range(s.stack_workers):
            port = self.worker_port(i)
            cmd = [sys.executable, "-m", "streams.cli", "worker", "--log-level", self.log_level,
                   "--port", str(port), "--host", "127.0.0.1",
                   "--data-dir", str(self.dir / f"worker-{port}"), "--archive-dir", str(self.dir / "archive"),
                   "--bootstrap", self.bootstrap]
            self.workers.append(Child(f"worker-{i}", cmd, self.logs / f"worker-{i}.log", echo, env).start())
            log.info("started worker-%d (pid %d) on %s", i, self.workers[-1].pid, self.worker_url(i))
        self._save_state()
        if prom_bin is not None:
            prom_dir = self.dir / "prometheus"
            config = write_prometheus_files(prom_dir, [f"127.0.0.1:{self.worker_port(i)}"
                                                       for i in range(s.stack_workers)],
                                            port=s.stack_prometheus_port,
                                            scrape_interval_s=s.stack_scrape_interval_s)
            self.prometheus = Child("prometheus", prometheus_command(config, prom_dir / "data",
                                                                     s.stack_prometheus_port),
                                    self.logs / "prometheus.log", echo).start()
            self._save_state()
        self._wait_ready()
        if self.workers:
            self.loaded = loaded_models(self.worker_url(0))
            self._save_state()

    def _prepare_models(self) -> dict[str, str]:
        """The model variables for the workers: configured ones, else bootstrapped ones (trained once)."""
        s = self.settings
        configured = {"ACTIONSTREAM_TRANSACT_CHECKPOINT": s.transact_checkpoint,
                      "ACTIONSTREAM_REALTIME_CHECKPOINT": s.realtime_checkpoint,
                      "ACTIONSTREAM_ITEMS_PATH": s.items_path}
        if any(v is not None for v in configured.values()):
            log.info("models: using the configured %s", ", ".join(f"{k}={v}" for k, v in configured.items() if v))
            self.models = {"source": "configured", **{k: str(v) for k, v in configured.items() if v}}
            return {k: str(v) for k, v in configured.items() if v}
        if not s.stack_models:
            log.info("models: none (--no-models): realtime vectors stay empty and score answers 503")
            self.models = {"source": "none"}
            return {}
        from streams.stack_models import WorldSpec, bootstrap_models

        world = WorldSpec()
        files = bootstrap_models(self.dir / "models", world, force=s.stack_retrain_models,
                                 progress=s.stack_logs == "prefix")
        manifest = files.read_manifest()
        self.models = {"source": "bootstrap", "dir": str(files.root), "items": str(files.items),
                       "pinnerformer": str(files.pinnerformer), "ranking": str(files.ranking),
                       "realtime": str(files.realtime), "world": manifest.get("world", world.__dict__)}
        return {"ACTIONSTREAM_TRANSACT_CHECKPOINT": str(files.ranking),
                "ACTIONSTREAM_REALTIME_CHECKPOINT": str(files.realtime), "ACTIONSTREAM_ITEMS_PATH": str(files.items)}

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.stack_ready_timeout_s
        pending = {c.name: f"{self.worker_url(i)}/readyz" for i, c in enumerate(self.workers)}
        if self.prometheus is not None:
            pending["prometheus"] = f"{self.prometheus_url}/-/ready"
        while pending:
            if self._stop.is_set():
                raise KeyboardInterrupt
            self.check_children()
            for name, url in list(pending.items()):
                if http_ok(url):
                    log.info("%s ready (%s)", name, url)
                    del pending[name]
            if time.monotonic() > deadline:
                raise ActionstreamError(f"not ready after {self.settings.stack_ready_timeout_s:.0f}s: "
                                        f"{', '.join(pending)}; see the logs in {self.logs}")
            time.sleep(0.3)

    def check_children(self) -> None:
        """Raise if the broker or a child exited on its own."""
        if self.broker is not None and (self.broker.proc is None or self.broker.proc.poll() is not None):
            raise BrokerError(f"the Kafka broker exited; see {self.broker.log_file}")
        for child in [*self.workers, *([self.prometheus] if self.prometheus else [])]:
            if not child.alive():
                assert child.proc is not None
                raise ActionstreamError(f"{child.name} exited with code {child.proc.returncode}; "
                                        f"see {child.log_path}")

    def status_line(self) -> str:
        parts = [f"Kafka {self.bootstrap}"]
        parts += [f"{c.name} {self.worker_url(i)}" for i, c in enumerate(self.workers)]
        if self.prometheus is not None:
            parts.append(f"Prometheus {self.prometheus_url}")
        if self.workers:
            parts.append("models " + (", ".join(f"{k} {v}" for k, v in sorted(self.loaded.items()))
                                      or "none loaded (score answers 503)"))
        where = f"logs {self.logs}/ (broker: {self.broker.log_file})" if self.broker else f"logs {self.logs}/"
        return ("actionstream up: " + " | ".join(parts) + f" | {where} | Ctrl-C or `make down` to stop")

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            self.check_children()

    def stop(self) -> None:
        """Stop in reverse order; safe to call twice and after a partial start."""
        if self.prometheus is not None:
            log.info("stopping prometheus")
            self.prometheus.stop(15)
        for child in reversed(self.workers):
            log.info("stopping %s", child.name)
            code = child.stop(45)
            log.info("%s stopped (exit code %s)", child.name, code)
        if self.broker is not None:
            log.info("stopping Apache Kafka")
            self.broker.stop()
        pid_file = self.dir / "stack.pid"
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
            (self.dir / "stack.json").unlink(missing_ok=True)

    def stray_pids(self) -> list[int]:
        """Pids of this stack's children still alive (empty after a clean :meth:`stop`)."""
        pids = [c.pid for c in [*self.workers, *([self.prometheus] if self.prometheus else [])] if c.proc]
        pids += [self._broker_pid] if self._broker_pid else []
        return [p for p in pids if _pid_alive(p) and not _is_zombie(p)]

    def _save_state(self) -> None:
        children = []
        if self.broker is not None and self.broker.proc is not None:
            children.append({"name": "kafka", "pid": self.broker.proc.pid, "marker": "kafka.Kafka"})
        for c in [*self.workers, *([self.prometheus] if self.prometheus else [])]:
            children.append({"name": c.name, "pid": c.pid,
                             "marker": "prometheus" if c is self.prometheus else "streams.cli worker"})
        state = {"pid": os.getpid(), "bootstrap": self.bootstrap, "partitions": self.settings.partitions,
                 "topic_actions": self.settings.topic_actions, "topic_dlq": self.settings.topic_dlq,
                 "topic_embeddings": self.settings.topic_embeddings,
                 "workers": [self.worker_url(i) for i in range(len(self.workers))],
                 "prometheus": self.prometheus_url if self.prometheus else None,
                 "archive_dir": str(self.dir / "archive"), "logs": str(self.logs), "models": self.models,
                 "loaded_models": self.loaded, "children": children}
        tmp = self.dir / "stack.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.dir / "stack.json")


def loaded_models(worker_url: str) -> dict[str, str]:
    """``{model label: version}`` of ``actionstream_model_info`` on a worker's /metrics (empty if unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{worker_url}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    return {smp.labels["model"]: smp.labels["version"] for fam in text_string_to_metric_families(text)
            for smp in fam.samples if smp.name == "actionstream_model_info" and smp.value == 1}


def load_state(stack_dir: Path) -> dict[str, Any]:
    """``stack.json`` of a running stack (for `actionstream demo`)."""
    path = Path(stack_dir) / "stack.json"
    if not path.exists():
        raise ConfigError(f"no running stack found ({path} is missing): start one with `make up`")
    state: dict[str, Any] = json.loads(path.read_text())
    if not _pid_alive(int(state["pid"])):
        raise ConfigError(f"the stack recorded in {path} (pid {state['pid']}) is not running: `make up`")
    return state


# ------------------------------------------------------------------------------------------- command

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="number of worker processes (env ACTIONSTREAM_STACK_WORKERS; 1)")
    p.add_argument("--no-prometheus", action="store_true", help="do not start the Prometheus server")
    p.add_argument("--state-dir", type=Path, help="where data, logs and the generated Prometheus config go "
                                                  "(env ACTIONSTREAM_STACK_DIR; .actionstream)")
    p.add_argument("--kafka-port", type=int, help="broker port (env ACTIONSTREAM_BROKER_PORT; 9092)")
    p.add_argument("--controller-port", type=int, help="KRaft controller port (env ACTIONSTREAM_BROKER_CONTROLLER_PORT; 9093)")
    p.add_argument("--worker-port", type=int, help="HTTP port of worker 0, worker i gets +i "
                                                   "(env ACTIONSTREAM_STACK_WORKER_PORT; 6066)")
    p.add_argument("--prometheus-port", type=int, help="Prometheus UI/API port (env ACTIONSTREAM_STACK_PROMETHEUS_PORT; 9090)")
    p.add_argument("--partitions", type=int, help="partitions of the user-keyed topics (env ACTIONSTREAM_PARTITIONS; 8)")
    p.add_argument("--no-models", action="store_true",
                   help="do not train the bootstrap models (env ACTIONSTREAM_STACK_MODELS=false): without "
                        "ACTIONSTREAM_TRANSACT_CHECKPOINT/_REALTIME_CHECKPOINT the workers run without TransAct "
                        "(realtime [], score 503)")
    p.add_argument("--retrain-models", action="store_true",
                   help="train the bootstrap models again (~1 min) even if <state-dir>/models/ has them "
                        "(env ACTIONSTREAM_STACK_RETRAIN_MODELS=true)")
    p.add_argument("--logs", choices=("prefix", "files"), help="prefix: children's logs on stdout, prefixed by "
                                                               "name (and in files); files: only in files")


def _say(text: str, *, err: bool = False) -> None:
    """Console output of the command (status line, stop notice): stdout, unbuffered."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)  # noqa: T201 - the command's output


def run(args: argparse.Namespace) -> int:
    settings = StackSettings.load(
        stack_workers=args.workers, stack_prometheus=False if args.no_prometheus else None,
        stack_dir=args.state_dir, broker_port=args.kafka_port, broker_controller_port=args.controller_port,
        stack_worker_port=args.worker_port, stack_prometheus_port=args.prometheus_port,
        partitions=args.partitions, stack_logs=args.logs,
        stack_models=False if args.no_models else None, stack_retrain_models=True if args.retrain_models else None)
    stack = Stack(settings, log_level=args.log_level)

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping the stack", signal.Signals(signum).name)
        stack.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t0 = time.monotonic()
    code = 0
    try:
        stack.start()
        _say(f"{stack.status_line()}  (up in {time.monotonic() - t0:.1f}s)")
        if settings.stack_logs == "files":
            for child in [*stack.workers, *([stack.prometheus] if stack.prometheus else [])]:
                _say(f"  {child.name} log: {child.log_path}")
        stack.wait()
    except KeyboardInterrupt:
        pass
    except ConfigError:
        raise
    except ActionstreamError as exc:
        _say(f"actionstream up: {exc}", err=True)
        code = 1
    finally:
        _say("stopping the stack ...")
        stack.stop()
        stray = stack.stray_pids()
        if stray:
            _say(f"WARNING: still running after stop: pids {stray}", err=True)
            code = code or 1
        else:
            _say("stopped: no process of this stack is left")
    return code
