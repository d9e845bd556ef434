"""Settings: one frozen pydantic-settings object per process, built at the entry point.

Every field reads the environment variable ``ACTIONSTREAM_<FIELD>`` (e.g. ``ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS``);
arguments passed to the constructor win over the environment. Nothing here is built at import time:
``main()`` of each command calls ``XSettings.load(...)`` and passes the object down.

A bad value fails at start-up with :class:`~streams.errors.ConfigError`, whose message names the variable
and says what is wrong, e.g.::

    ACTIONSTREAM_PARTITIONS: Input should be greater than or equal to 1 (got '0')
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.errors import ConfigError

MAX_ID_CHARS = 128  # longest event_id / user_id / item_id / surface (streams.events)
# Kafka's default producer max.request.size (the broker's message.max.bytes is 1,048,588): one record
KAFKA_RECORD_LIMIT = 1_000_000

ENV_PREFIX = "ACTIONSTREAM_"
DEFAULT_ACTIONS: tuple[str, ...] = ("impression", "click", "save", "closeup", "hide", "share", "comment")
DEFAULT_SURFACES: tuple[str, ...] = ("homefeed", "search", "related", "profile", "notifications", "other")
DAY_MS = 86_400_000

S = TypeVar("S", bound="BaseAppSettings")


def _split_csv(value: Any) -> Any:
    """Accept ``a,b,c`` (the natural form in an environment variable) as well as a list."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


CsvTuple = Annotated[tuple[str, ...], NoDecode]


class BaseAppSettings(BaseSettings):
    """Common base: env prefix, frozen, unknown ACTIONSTREAM_* keys ignored, readable errors."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    @classmethod
    def load(cls: type[S], **overrides: Any) -> S:
        """Build from environment + overrides; raise :class:`ConfigError` naming each bad variable."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None

    def masked(self) -> dict[str, Any]:
        """Settings as a dict for logging, secrets shown as ``**********``."""
        return {k: ("**********" if isinstance(v, SecretStr) and v.get_secret_value() else v)
                for k, v in self.__dict__.items()}


def format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid settings (fix these environment variables or options):"]
    for err in exc.errors():
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        if not err["loc"]:  # a model validator: its message names the variables itself
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        lines.append(f"  {ENV_PREFIX}{str(err['loc'][0]).upper()}: {err['msg']}{got_text}")
    return "\n".join(lines)


class KafkaSettings(BaseAppSettings):
    """Where Kafka is and how to talk to it; topic names (DESIGN.md contract, names configurable)."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    topic_actions: str = Field("user-actions", min_length=1)
    topic_dlq: str = Field("user-actions-dlq", min_length=1)
    topic_embeddings: str = Field("pinnerformer-embeddings", min_length=1)
    partitions: int = Field(8, ge=1, le=10_000, description="shared partition count of user-keyed topics")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, v: str) -> str:
        for hostport in v.split(","):
            host, sep, port = hostport.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError("expected host:port[,host:port...]")
        return v

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.kafka_security_protocol.startswith("SASL"):
            if not self.kafka_sasl_mechanism or not self.kafka_sasl_username:
                raise ValueError(
                    "kafka_security_protocol is SASL_*: set ACTIONSTREAM_KAFKA_SASL_MECHANISM and "
                    "ACTIONSTREAM_KAFKA_SASL_USERNAME (and ..._PASSWORD)")
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: file {path} does not exist")
        return self

    def kafka_python_security(self) -> dict[str, Any]:
        """Security keyword arguments for kafka-python clients (empty for PLAINTEXT)."""
        out: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            out.update(sasl_mechanism=self.kafka_sasl_mechanism,
                       sasl_plain_username=self.kafka_sasl_username,
                       sasl_plain_password=self.kafka_sasl_password.get_secret_value())
        if self.kafka_ssl_cafile:
            out["ssl_cafile"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            out["ssl_certfile"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            out["ssl_keyfile"] = str(self.kafka_ssl_keyfile)
        return out


class EventSettings(BaseAppSettings):
    """The event contract's tunables (DESIGN.md: Event v1)."""

    actions: CsvTuple = DEFAULT_ACTIONS
    surfaces: CsvTuple = DEFAULT_SURFACES
    max_event_bytes: int = Field(16_384, ge=256, le=1_048_576)
    future_tolerance_ms: int = Field(300_000, ge=0)
    sequence_length: int = Field(100, ge=1, description="N: actions kept per user (at most 1,869: a stored "
                                 "sequence must fit one Kafka record)")
    window_days: float = Field(30.0, gt=0, le=3650, description="actions older than this are dropped")

    @field_validator("actions", "surfaces", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        return _split_csv(v)

    @field_validator("sequence_length")
    @classmethod
    def _fits_one_record(cls, v: int) -> int:
        from streams.sequence import max_blob_bytes, max_sequence_length

        if v > (most := max_sequence_length(MAX_ID_CHARS, KAFKA_RECORD_LIMIT)):
            raise ValueError(
                f"at most {most:,}: a user's sequence is stored as ONE changelog record, up to "
                f"{max_blob_bytes(v, MAX_ID_CHARS):,} bytes for {v:,} actions with {MAX_ID_CHARS}-character item "
                f"ids, over the {KAFKA_RECORD_LIMIT:,}-byte Kafka producer limit")
        return v

    @field_validator("actions", "surfaces")
    @classmethod
    def _vocab(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one name")
        if len(set(v)) != len(v):
            raise ValueError("names must be unique")
        if len(v) > 250:
            raise ValueError("at most 250 names (codes are stored in one byte)")
        return v

    @property
    def window_ms(self) -> int:
        return int(self.window_days * DAY_MS)


class ProducerSettings(KafkaSettings, EventSettings):
    """`actionstream produce` / `simulate`: a kafka-python producer."""

    producer_linger_ms: int = Field(5, ge=0, le=10_000)
    producer_batch_bytes: int = Field(262_144, ge=1024)
    # gzip: the one codec both kafka-python and aiokafka (Faust) handle without extra packages;
    # lz4/zstd/snappy need python-lz4/zstandard + cramjam installed on producers AND consumers.
    producer_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "gzip"


class BrokerSettings(BaseAppSettings):
    """`actionstream broker`: the embedded single-node Apache Kafka (KRaft) for local use and tests."""

    broker_data_dir: Path = Path(".actionstream/kafka")
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(9092, ge=1, le=65535)
    broker_controller_port: int = Field(9093, ge=1, le=65535)
    broker_heap: str = Field("768m", pattern=r"^\d+[mMgG]$")
    broker_lib_dir: Path | None = None  # default: deploy/kafka/lib of this checkout
    broker_start_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _ports(self) -> BrokerSettings:
        if self.broker_port == self.broker_controller_port:
            raise ValueError("ACTIONSTREAM_BROKER_PORT and ACTIONSTREAM_BROKER_CONTROLLER_PORT must differ")
        return self


class WorkerSettings(KafkaSettings, EventSettings):
    """`actionstream worker`: one Faust stream worker (sequences, feature API, metrics).

    Consumer-group timing (measured, see ``shared/reference/measurements.md``): Faust's defaults (session
    60 s) made a worker ready after ~33 s. The defaults below bring start-up and takeover to a few seconds:

    * ``session_timeout_s=6``: a worker killed with -9 is declared dead after 6 s. 3 s was measured to
      work, but on a 2-core machine shared with other work a GC pause or a busy neighbour can stall the
      loop past 3 s and trigger a needless rebalance; 6 s keeps the margin and still recovers in seconds.
    * ``heartbeat_interval_s=0.5`` (≤ session/3, Kafka's rule), ``rebalance_timeout_s=10``,
      ``max_poll_interval_s=30``: a rebalance waits at most 10 s for slow members.
    * ``max_poll_records=4000``: Faust hands each ``getmany`` batch to the agent's buffer and
      only polls again once the batch is queued; unbounded (the default), one poll returns ~40k records
      and on a CPU-starved box the next poll came > 30 s later, so the broker-side poll timer made the
      worker leave its group mid-stream (observed). 4000 records are under a second of work at our rates
      (8 s even at 500 events/s, far below ``max_poll_interval_s``). With the fast hand-off
      (:mod:`streams.drain`), 1000 left the worker waiting between polls: it used 0.70 / 0.74 of a core
      with the machine half idle, against 0.85 / 0.94 with 4000 (one worker, ``make bench`` platform section).
    * ``stream_buffer_maxsize=32768`` (Faust: 4096): Faust takes a partition out of the fetch when the agent's
      buffer is 80% full and gives it back at 40%; with 4096 slots that happened every few hundred ms, and
      each time the pair of workers waited for the next fetch: two workers used 1.08-1.19 cores of the 2 with
      the machine 1.25-1.41 busy (per-thread schedstat: the main threads on a CPU 58-70% of the time, waiting
      for one only 8%). Measured on an AMD EPYC, 300k events, ``bench.run --only platform``: one worker
      10,870-12,976 -> 14,095-15,565 events/s, two 15,244-16,586 -> 21,738-23,070 (16384: 13,650 / 20,627).
      The buffer holds parsed events (~32k x ~1 KB at most) and fills only while the worker is behind.
    * ``fetch_max_wait_ms=50`` (Faust: 1500): aiokafka has one fetch in flight per broker, and one that holds
      only quiet partitions is parked at the broker that long, while input partitions that ran dry wait for it
      (``streams.drain`` module docstring): two workers 21.7-29.4k -> 24.2-31.3k events/s, 2 / 1 worker
      1.54-1.61x -> 1.77-1.79x. An idle worker sends ~20 empty fetches a second (1.8% -> 3.3% of a core).
    * ``commit_interval_s=1``: offsets (and the changelog before them) are committed every second, so a
      crash replays at most ~1 s of input (replays are harmless: the sequence update is idempotent).
    * ``standby_replicas=0``: a standby doubles the changelog reading on this 2-core box; with the
      tuned timeouts a takeover replays the changelog in seconds. Set 1 in production for instant failover.
    """

    worker_id: str = Field("actionstream", min_length=1, pattern=r"^[A-Za-z0-9._-]+$",
                           description="Faust app id = consumer group and changelog topic prefix")
    web_host: str = Field("127.0.0.1", min_length=1)
    web_port: int = Field(6066, ge=1, le=65535)
    data_dir: Path | None = Field(None, description="RocksDB dir; default .actionstream/worker-<web_port>")
    archive_dir: Path | None = Field(Path(".actionstream/archive"), description="event archive; empty = off")
    archive_flush_interval_s: float = Field(1.0, gt=0, le=3600)

    session_timeout_s: float = Field(6.0, ge=1, le=300)
    heartbeat_interval_s: float = Field(0.5, gt=0, le=60)
    rebalance_timeout_s: float = Field(10.0, ge=1, le=600)
    max_poll_interval_s: float = Field(30.0, ge=1, le=3600)
    max_poll_records: int = Field(4000, ge=1, le=1_000_000)
    producer_linger_s: float = Field(0.005, ge=0, le=1.0, description="batching delay of the worker's producer")
    commit_interval_s: float = Field(1.0, gt=0, le=60)
    standby_replicas: int = Field(0, ge=0, le=10)
    blocking_timeout_s: float | None = Field(None, gt=0, description="log the stack when the loop blocks this long")
    fast_drain: bool = Field(True, description="hand each message to the agent without Faust's 4 tasks per "
                                               "message (streams.drain; ~1.4-2x one worker's throughput); false = "
                                               "Faust's own loop (both with the seek fix in streams.drain)")
    stream_buffer_maxsize: int = Field(32768, ge=1, le=1_000_000,
                                       description="events queued between the consumer and the agent")
    fetch_max_wait_ms: int = Field(50, ge=1, le=60_000,
                                   description="longest the broker holds a fetch with no new records (Faust: 1500)")
    gc_freeze: bool = Field(True, description="once ready, freeze the start-up heap so full garbage collections "
                                              "skip it (streams.heap: 120-160 ms loop holds -> ~6 ms)")

    api_token: SecretStr = Field(SecretStr(""), description="bearer token for the API (empty = no auth)")
    max_candidates: int = Field(1000, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    transact_checkpoint: Path | None = Field(None, description="early-fusion RankingModel (score route); empty = none")
    realtime_checkpoint: Path | None = Field(None, description="candidate-free TransAct (realtime vectors); empty = none")
    items_path: Path | None = Field(None, description="item vectors: JSONL file or ItemStore RocksDB dir; empty = hashed ids")
    encoder_batch_max: int = Field(256, ge=1, le=8192, description="users per realtime-encoder micro-batch")
    encoder_interval_ms: int = Field(50, ge=0, le=60_000, description="wait between encoder micro-batches")
    encoder_max_busy: float = Field(1.0, gt=0, le=1, description="most of the wall time the encoder may compute; "
                                    "less = bigger, later batches. In its own niced process (the default) the "
                                    "OS gives the stream priority, so 1; as a thread beside the loop ~0.5")
    torch_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads (the realtime encoder)")
    encoder_process: bool = Field(True, description="run the realtime encoder in a child process "
                                  "(streams.encoder_process): the stream keeps the GIL; false = a thread")
    encoder_nice: int = Field(10, ge=0, le=19, description="niceness added to the encoder process: the stream "
                              "wins a contended core, the encoder gets the idle cycles")
    score_threads: int = Field(1, ge=1, le=256, description="cores one /score request may use: its candidates "
                               "are split into this many slices scored in parallel; > 1 sets torch's intra-op "
                               "pool to 1 for the whole process (measured 1 x 500: 2.0x faster with 2 on 2 idle "
                               "cores; keep 1 where the stream needs the cores)")
    score_int8_dcn: bool = Field(True, description="score with int8 DCN cross layers (VNNI int8 GEMMs, per-row "
                                 "scales; `actionstream eval transact --int8-dcn` shows what it changes); "
                                 "false = float32, exactly the model's forward")
    score_bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="score with bfloat16 GEMM operands in the transformer (float32 LayerNorm, softmax and "
        "sums; `actionstream eval transact --bf16` shows what it changes): auto = where the CPU has "
        "AVX512-BF16 or AMX (elsewhere bf16 GEMMs are emulated and 3-4x slower), on, off = float32")

    @field_validator("archive_dir", "data_dir", "transact_checkpoint", "realtime_checkpoint", "items_path",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _check_worker(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ValueError("ACTIONSTREAM_HEARTBEAT_INTERVAL_S must be at most a third of "
                             "ACTIONSTREAM_SESSION_TIMEOUT_S (Kafka's rule)")
        if self.transact_checkpoint is not None and not Path(self.transact_checkpoint).is_file():
            raise ValueError(f"ACTIONSTREAM_TRANSACT_CHECKPOINT: file {self.transact_checkpoint} does not exist")
        if self.realtime_checkpoint is not None and not Path(self.realtime_checkpoint).is_file():
            raise ValueError(f"ACTIONSTREAM_REALTIME_CHECKPOINT: file {self.realtime_checkpoint} does not exist")
        if self.items_path is not None and not Path(self.items_path).exists():
            raise ValueError(f"ACTIONSTREAM_ITEMS_PATH: {self.items_path} does not exist (JSONL file or ItemStore dir)")
        return self

    @property
    def state_dir(self) -> Path:
        """Where this worker's RocksDB files live (``data_dir`` or ``.actionstream/worker-<port>``)."""
        return Path(self.data_dir) if self.data_dir is not None else Path(f".actionstream/worker-{self.web_port}")

    @property
    def changelog_topic(self) -> str:
        """Faust's name for the ``sequences`` table changelog topic."""
        return f"{self.worker_id}-sequences-changelog"

    @property
    def reroute_topic(self) -> str:
        """Internal topic carrying events that arrived on a partition that does not own their user."""
        return f"{self.worker_id}-{self.topic_actions}-by-user"
