"""Checks shared by the real-CLI tests (test_<engine>_cli.py): one function per behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildstudio.core.outcome import judge
from buildstudio.protocol.records import DiffStat, Outcome
from tests.engines import harness as h
from tests.engines.scenarios import Outcome as Run
from tests.engines.scenarios import run_scenario, scenarios

BIG_PROMPT = "Do the task. " + "x" * 200_000 + ' END "quoted" $(id) `tick`\n'


def need(engine: str) -> None:
    if h.engine_binary(engine) is None:
        pytest.skip(f"{engine} CLI not installed (hack/install-engines.sh)")


def verdict(o: Run, stop_reason: str | None = None) -> Outcome:
    files = len(o.changed)
    return judge(o.parser.summary, exit_code=o.run.exit_code, stop_reason=stop_reason, diff_stat=DiffStat(files=files))[
        0
    ]


def write_edit(engine: str, tmp: Path, expected_steps: int, expected_tools: int) -> Run:
    o = run_scenario(engine, scenarios(engine)["write-edit"], tmp)
    assert o.run.exit_code == 0, o.run.stderr
    assert o.changed == ["calc.py", "sub.py"]
    assert (o.repo / "sub.py").read_text() == "def sub(a, b):\n    return a - b\n"
    assert "return b + a" in (o.repo / "calc.py").read_text()
    s = o.parser.summary
    assert (s.steps, s.tool_calls, s.tool_errors) == (expected_steps, expected_tools, 0)
    assert sorted(s.files_touched) == ["calc.py", "sub.py"]
    assert verdict(o) is Outcome.COMPLETED
    return o


def model_error(engine: str, tmp: Path) -> Run:
    o = run_scenario(engine, scenarios(engine)["server-500"], tmp)
    assert verdict(o) is Outcome.MODEL_ERROR, o.parser.summary.errors
    assert o.changed == []
    return o


def overflow(engine: str, tmp: Path) -> Run:
    o = run_scenario(engine, scenarios(engine)["context-overflow"], tmp)
    assert verdict(o) is Outcome.CONTEXT_OVERFLOW, o.parser.summary.errors
    return o
