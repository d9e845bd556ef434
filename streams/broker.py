"""Embedded Apache Kafka (KRaft, single node) for local use and tests.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (``make install`` resolves them into
``deploy/kafka/lib``); the broker runs on the machine's Java as ``kafka.Kafka``. On first start the data
dir is formatted (``kafka.tools.StorageTool format``); later starts reuse it, so a stopped broker comes
back with its data. The broker is never part of the platform's processes in production: there,
``ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS`` points at an existing cluster.

Settings tuned for a laptop/test broker (not for production): ``group.initial.rebalance.delay.ms=0``
(a consumer group is ready at once instead of after 3 s), 8 partitions for ``__consumer_offsets``
(creating 50 costs seconds on first group join), replication factor 1.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from streams.errors import BrokerError
from streams.settings import BrokerSettings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LIB_DIR = REPO_ROOT / "deploy" / "kafka" / "lib"


def find_lib_dir(configured: Path | None = None) -> Path:
    lib = Path(configured) if configured else DEFAULT_LIB_DIR
    if not lib.is_dir() or not any(lib.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"Kafka jars not found in {lib}. Run `make kafka-jars` (or `make install`), which resolves them "
            "from Maven Central with deploy/kafka/pom.xml, or set ACTIONSTREAM_BROKER_LIB_DIR.")
    return lib


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback TCP port that this process has not handed out before.

    The caller binds it later (a child process, often seconds later), so two calls before the first
    port is bound could return the same port: observed in CI, where two test workers got one port
    and the second died on "address already in use" while the first answered its health checks."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise OSError("no free loopback port left that was not handed out already")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class EmbeddedKafka:
    """One Apache Kafka process in KRaft mode (broker + controller), on loopback."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.broker_data_dir).resolve()
        self.lib_dir = find_lib_dir(settings.broker_lib_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        if shutil.which("java") is None:
            raise BrokerError("`java` is not on PATH: install a JDK (17+) to run the embedded broker")

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.broker_host}:{self.settings.broker_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        cmd = ["java"]
        if heap:
            cmd += [f"-Xmx{heap}", f"-Xms{heap}"]
        cmd += ["-XX:+UseG1GC", "-XX:TieredStopAtLevel=1" if heap is None else "-XX:+UseStringDeduplication",
                f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
                "-Dkafka.logs.dir=" + str(self.data_dir),
                "-cp", str(self.lib_dir / "*"), main, *args]
        return cmd

    def _write_config(self) -> Path:
        s = self.settings
        logs = self.data_dir / "log"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.broker_host}:{s.broker_controller_port}",
            "listeners": f"PLAINTEXT://{s.broker_host}:{s.broker_port},CONTROLLER://{s.broker_host}:{s.broker_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.broker_host}:{s.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "8",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "-1",
            "log.cleaner.backoff.ms": "5000",
            "delete.topic.enable": "true",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={self.log_file}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.request.logger=WARN\nlog4j.logger.state.change.logger=WARN\n"
            "log4j.logger.org.apache.kafka.storage=WARN\nlog4j.logger.kafka.log=WARN\n")
        return path

    def start(self) -> EmbeddedKafka:
        """Format the data dir if new, start the broker and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        s = self.settings
        for port in (s.broker_port, s.broker_controller_port):
            if _port_open(s.broker_host, port):
                raise BrokerError(f"port {s.broker_host}:{port} is already in use: is another broker running? "
                                  "Stop it or set ACTIONSTREAM_BROKER_PORT / ACTIONSTREAM_BROKER_CONTROLLER_PORT")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "log" / "meta.properties").exists():
            cluster_id = self._cluster_id()
            fmt = subprocess.run(self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)),
                                 capture_output=True, text=True, timeout=120)
            if fmt.returncode != 0:
                raise BrokerError(f"formatting {self.data_dir} failed:\n{fmt.stdout}\n{fmt.stderr}")
            log.info("formatted KRaft log dir %s (cluster %s)", self.data_dir / "log", cluster_id)
        out = open(self.data_dir / "broker.stdout", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(config), heap=s.broker_heap),
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self._wait_ready(s.broker_start_timeout_s)
        log.info("Apache Kafka ready at %s (pid %d, data %s)", self.bootstrap, self.proc.pid, self.data_dir)
        return self

    def _cluster_id(self) -> str:
        # StorageTool random-uuid is a base64url uuid; build the same without a JVM start. Like Kafka's
        # Uuid.randomUuid, never one starting with "-": the tool's argument parser would take it for an
        # option ("argument --cluster-id/-t: expected one argument"), failing 1 start in 64.
        import base64
        while True:
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cid.startswith("-"):
                return cid

    def _wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient  # kafka-python
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BrokerError(f"broker exited with code {self.proc.returncode}; see {self.log_file} "
                                  f"and {self.data_dir / 'broker.stdout'}")
            if _port_open(self.settings.broker_host, self.settings.broker_port):
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                             client_id="actionstream-broker-probe")
                    try:
                        admin.describe_cluster()
                        return
                    finally:
                        admin.close()
                except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                    last_error = exc
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"broker did not answer within {timeout:.0f}s (last error: {last_error}); see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Kafka's controlled shutdown), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("broker did not stop in %.0fs; killing it", timeout)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the broker (fault tests)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def run_foreground(settings: BrokerSettings) -> int:
    """`actionstream broker`: start, print where it listens, stop cleanly on Ctrl-C / SIGTERM."""
    broker = EmbeddedKafka(settings)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    t0 = time.monotonic()
    broker.start()
    print(f"Apache Kafka ready at {broker.bootstrap} in {time.monotonic() - t0:.1f}s "  # noqa: T201 - console output
          f"(data {broker.data_dir}, log {broker.log_file}); Ctrl-C to stop", flush=True)
    try:
        while not stopping:
            assert broker.proc is not None
            if broker.proc.poll() is not None:
                print(f"broker exited with code {broker.proc.returncode}; see {broker.log_file}", flush=True)  # noqa: T201 - console output of `actionstream broker`
                return 1
            time.sleep(0.5)
    finally:
        print("stopping Apache Kafka ...", flush=True)  # noqa: T201 - console output of `actionstream broker`
        broker.stop()
        print("stopped", flush=True)  # noqa: T201 - console output of `actionstream broker`
    return 0
