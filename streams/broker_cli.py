"""`actionstream broker`: the embedded Apache Kafka broker in the foreground (used by `make up`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.broker import run_foreground
from streams.settings import BrokerSettings

HELP = "run the embedded Apache Kafka broker (KRaft, loopback) until Ctrl-C"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="log dir (env ACTIONSTREAM_BROKER_DATA_DIR; default .actionstream/kafka)")
    p.add_argument("--port", type=int, help="client port (env ACTIONSTREAM_BROKER_PORT; default 9092)")
    p.add_argument("--controller-port", type=int, help="KRaft controller port (default 9093)")


def run(args: argparse.Namespace) -> int:
    settings = BrokerSettings.load(broker_data_dir=args.data_dir, broker_port=args.port,
                                   broker_controller_port=args.controller_port)
    return run_foreground(settings)
