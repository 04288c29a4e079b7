"""Shared test configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.kube.plugin"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
