"""The callengine command: help, version, and the small sub-commands it owns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import __version__
from engine.cli import main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "run", "walkthrough", "schema", "fsm", "sim", "fs-emulator", "cluster", "report", "db"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"callengine {__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_walkthrough_prints_transitions_and_one_cdr(capsys):
    assert main(["walkthrough"]) == 0
    out = capsys.readouterr().out
    assert "ROUTING -> QUEUED" in out and "RINGING -> ACTIVE" in out and "ACTIVE -> HELD" in out
    assert out.count("CDR: disposition=answered") == 1


def test_schema_prints_json_and_writes_files(capsys, tmp_path):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "ChannelCreated" in schema["$defs"]
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"messages.schema.json", "asyncapi.yaml"}


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "engine.cli", "fsm"], capture_output=True, text=True, check=True)
    assert "| `ROUTING` |" in out.stdout
