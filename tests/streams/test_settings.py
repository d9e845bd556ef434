"""Settings: environment parsing, CSV vocabularies, and start-up errors that name the variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import (
    DEFAULT_ACTIONS,
    BrokerSettings,
    EventSettings,
    KafkaSettings,
    ProducerSettings,
    WorkerSettings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    for name in list(os.environ):
        if name.startswith("ACTIONSTREAM_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    s = ProducerSettings.load()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092" and s.partitions == 8
    assert s.actions == DEFAULT_ACTIONS and s.sequence_length == 100
    assert s.window_ms == 30 * 86_400_000
    assert (s.topic_actions, s.topic_dlq, s.topic_embeddings) == ("user-actions", "user-actions-dlq",
                                                                   "pinnerformer-embeddings")


def test_environment_is_read_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9093")
    monkeypatch.setenv("ACTIONSTREAM_PARTITIONS", "16")
    monkeypatch.setenv("ACTIONSTREAM_WINDOW_DAYS", "7.5")
    s = ProducerSettings.load()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9093" and s.partitions == 16
    assert s.window_ms == int(7.5 * 86_400_000)
    s2 = ProducerSettings.load(partitions=4, kafka_bootstrap_servers=None)  # None = "not given"
    assert s2.partitions == 4 and s2.kafka_bootstrap_servers == "k1:9092,k2:9093"


def test_csv_vocabularies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONSTREAM_ACTIONS", " view, click ,buy,")
    monkeypatch.setenv("ACTIONSTREAM_SURFACES", "home")
    s = EventSettings.load()
    assert s.actions == ("view", "click", "buy") and s.surfaces == ("home",)
    assert EventSettings.load(actions=["a", "b"]).actions == ("a", "b")


def test_settings_are_frozen() -> None:
    s = KafkaSettings.load()
    with pytest.raises(Exception, match="frozen"):
        s.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(("var", "value", "message"), [
    ("ACTIONSTREAM_PARTITIONS", "0", "greater than or equal to 1"),
    ("ACTIONSTREAM_PARTITIONS", "eight", "valid integer"),
    ("ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
    ("ACTIONSTREAM_ACTIONS", "click,click", "unique"),
    ("ACTIONSTREAM_ACTIONS", " , ", "at least one"),
    ("ACTIONSTREAM_SEQUENCE_LENGTH", "0", "greater than or equal to 1"),
    ("ACTIONSTREAM_SEQUENCE_LENGTH", "5000", "at most 1,869: a user's sequence is stored as ONE changelog record"),
    ("ACTIONSTREAM_KAFKA_SECURITY_PROTOCOL", "TLS", "PLAINTEXT"),
    ("ACTIONSTREAM_PRODUCER_COMPRESSION", "brotli", "gzip"),
    ("ACTIONSTREAM_MAX_EVENT_BYTES", "10", "greater than or equal to 256"),
])
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        ProducerSettings.load()
    lines = [line for line in str(err.value).splitlines() if var in line]
    assert len(lines) == 1 and message in lines[0], str(err.value)


def test_model_level_errors_name_their_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACTIONSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="ACTIONSTREAM_KAFKA_SASL_MECHANISM"):
        KafkaSettings.load()
    monkeypatch.setenv("ACTIONSTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("ACTIONSTREAM_KAFKA_SSL_CAFILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="ACTIONSTREAM_KAFKA_SSL_CAFILE"):
        KafkaSettings.load()
    with pytest.raises(ConfigError, match="ACTIONSTREAM_BROKER_CONTROLLER_PORT"):
        BrokerSettings.load(broker_port=9000, broker_controller_port=9000)


def test_security_kwargs_and_masking(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = KafkaSettings.load(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                           kafka_sasl_username="svc", kafka_sasl_password="s3cret", kafka_ssl_cafile=ca)
    kw = s.kafka_python_security()
    assert kw == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
                  "sasl_plain_password": "s3cret", "ssl_cafile": str(ca)}
    assert "s3cret" not in repr(s) and s.masked()["kafka_sasl_password"] == "**********"
    assert KafkaSettings.load().kafka_python_security() == {"security_protocol": "PLAINTEXT"}


def test_score_bf16_choices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert WorkerSettings.load(data_dir=tmp_path).score_bf16 == "auto"
    monkeypatch.setenv("ACTIONSTREAM_SCORE_BF16", "off")
    assert WorkerSettings.load(data_dir=tmp_path).score_bf16 == "off"
    monkeypatch.setenv("ACTIONSTREAM_SCORE_BF16", "yes")
    with pytest.raises(ConfigError) as err:
        WorkerSettings.load(data_dir=tmp_path)
    lines = [line for line in str(err.value).splitlines() if "ACTIONSTREAM_SCORE_BF16" in line]
    assert len(lines) == 1 and "'auto', 'on' or 'off'" in lines[0], str(err.value)


def test_fetch_max_wait_ms_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert WorkerSettings.load(data_dir=tmp_path).fetch_max_wait_ms == 50
    monkeypatch.setenv("ACTIONSTREAM_FETCH_MAX_WAIT_MS", "200")
    assert WorkerSettings.load(data_dir=tmp_path).fetch_max_wait_ms == 200
    monkeypatch.setenv("ACTIONSTREAM_FETCH_MAX_WAIT_MS", "0")
    with pytest.raises(ConfigError) as err:
        WorkerSettings.load(data_dir=tmp_path)
    assert "ACTIONSTREAM_FETCH_MAX_WAIT_MS" in str(err.value)


def test_gc_freeze_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert WorkerSettings.load(data_dir=tmp_path).gc_freeze is True
    monkeypatch.setenv("ACTIONSTREAM_GC_FREEZE", "false")
    assert WorkerSettings.load(data_dir=tmp_path).gc_freeze is False
    monkeypatch.setenv("ACTIONSTREAM_GC_FREEZE", "sometimes")
    with pytest.raises(ConfigError) as err:
        WorkerSettings.load(data_dir=tmp_path)
    assert "ACTIONSTREAM_GC_FREEZE" in str(err.value)
