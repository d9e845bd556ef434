"""Shared fixtures. The Kafka broker is real Apache Kafka (KRaft), started lazily once per session.

* ``kafka`` (session): an :class:`~streams.broker.EmbeddedKafka` on free loopback ports in a temp dir;
  ``kafka.bootstrap`` is ``host:port``. Set ``ACTIONSTREAM_TEST_BOOTSTRAP`` to use a running broker
  instead (then tests that stop/restart the broker are skipped).
* ``unique_topic`` / ``unique_group``: factories for per-test names, so tests never share state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedKafka, free_port
from streams.settings import BrokerSettings


class ExternalKafka:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.proc = None


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka | ExternalKafka]:
    external = os.environ.get("ACTIONSTREAM_TEST_BOOTSTRAP")
    if external:
        yield ExternalKafka(external)
        return
    data_dir: Path = tmp_path_factory.mktemp("kafka")
    broker = EmbeddedKafka(BrokerSettings(broker_data_dir=data_dir, broker_port=free_port(),
                                          broker_controller_port=free_port(), broker_heap="512m"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    base = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{base}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def unique_group(request: pytest.FixtureRequest) -> Callable[[], str]:
    def make() -> str:
        return f"g-{request.node.name[:30]}-{uuid.uuid4().hex[:8]}"

    return make
