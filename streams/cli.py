"""`actionstream`: one console script, subcommands loaded lazily (``--help`` never imports torch).

Each subcommand lives in the module that owns it, which exposes::

    HELP: str                                  # one line for `actionstream --help`
    def add_arguments(p: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int   # builds its Settings object, returns the exit code

A :class:`~streams.errors.ConfigError` raised anywhere below prints its message and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from streams.errors import ActionstreamError, ConfigError

# (command words) -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("broker",): ("streams.broker_cli", "run the embedded Apache Kafka broker (KRaft, loopback) until Ctrl-C"),
    ("topics",): ("streams.topics", "create or describe the platform's Kafka topics"),
    ("produce",): ("streams.producer", "validate JSON-lines events from a file/stdin and publish them"),
    ("simulate",): ("streams.simulate", "generate realistic synthetic user actions (publish or --out file)"),
    ("worker",): ("streams.worker", "run a Faust stream worker: sequences, features API, metrics"),
    ("up",): ("streams.stack", "run the whole local platform: Kafka, topics, worker(s), Prometheus"),
    ("demo",): ("streams.demo", "drive a running local stack: traffic, daily job, print features and scores"),
    ("train", "transact"): ("transact.train", "train the TransAct ranking model"),
    ("eval", "transact"): ("transact.evaluate", "evaluate a TransAct checkpoint: HIT@3 and AUC per head"),
    ("ablate", "transact"): ("transact.ablate", "run the TransAct paper's ablations on one split"),
    ("train", "pinnerformer"): ("embeddings.train", "train the PinnerFormer user-embedding model"),
    ("eval", "pinnerformer"): ("embeddings.evaluate", "evaluate PinnerFormer: Recall@10, P90 coverage@10"),
    ("daily",): ("embeddings.daily_job", "daily job: embed users active in the last 24 h, publish embeddings"),
    ("experiment", "hybrid"): ("embeddings.hybrid_experiment", "HIT@3 of daily vs realtime vs hybrid features"),
    ("data", "movielens"): ("transact.movielens", "convert MovieLens-100k (recbole wheel) into action events"),
}


def _top_help() -> str:
    lines = ["usage: actionstream <command> [options]   (actionstream <command> --help for details)", "",
             "commands:"]
    for words, (_, text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<22} {text}")
    return "\n".join(lines)


def _resolve(argv: Sequence[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            return words, list(argv[n:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    found = _resolve(argv)
    if found is None:
        print(f"actionstream: unknown command {' '.join(argv[:2])!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    words, rest = found
    module_name, text = COMMANDS[words]
    # Before torch loads: idle OpenMP threads must sleep, not spin, on cores shared with the stream
    # (measured: 2 spinning threads made 1 x 500 scoring 8x slower in CPU time on a busy 2-core box).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="actionstream " + " ".join(words), description=text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command_argv = rest  # the options as given, for commands that re-run themselves in child processes
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return int(module.run(args) or 0)
    except ConfigError as exc:
        print(f"actionstream: {exc}", file=sys.stderr)
        return 2
    except ActionstreamError as exc:
        print(f"actionstream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
