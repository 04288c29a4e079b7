"""Engine adapter tests: recorded streams (fast, always) and the real CLIs (`-m engines`)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "engines"


def fixture_lines(engine: str, name: str) -> list[str]:
    return (FIXTURES / engine / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
