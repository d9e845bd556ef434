"""The `actionstream` dispatcher: help, unknown commands, config errors, and no torch import for --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for words, (_, text) in COMMANDS.items():
        assert f"  {' '.join(words):<22} {text}" in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "expected"), [
    ("produce", ["Exit codes", "--dry-run", "--bootstrap"]),
    ("simulate", ["--rate", "--out", "--days", "--items-out", "--seed"]),
    ("topics", ["create", "describe", "--partitions", "compact"]),
    ("broker", ["--data-dir", "--port"]),
])
def test_command_help(command: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in expected:
        assert text in out


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom streams.cli import main\nmain(['--help'])\n"
            "for c in ('produce', 'simulate', 'topics', 'broker'):\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_bad_setting_exits_2_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ACTIONSTREAM_PARTITIONS", "0")
    assert main(["topics", "describe"]) == 2
    assert "ACTIONSTREAM_PARTITIONS: Input should be greater than or equal to 1" in capsys.readouterr().err
    monkeypatch.delenv("ACTIONSTREAM_PARTITIONS")
    assert main(["produce", "--bootstrap", "nohostport", "--dry-run"]) == 2
    assert "ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err


def test_produce_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", str(tmp_path / "nope.jsonl"), "--dry-run"]) == 2
    assert "no such file" in capsys.readouterr().err
