"""The scripted ResponsesServer lives in ``buildstudio.commands.scripted_responses``; re-exported for the tests."""

from __future__ import annotations

from buildstudio.commands.scripted_responses import OVERFLOW_BODY, ResponsesServer

__all__ = ["OVERFLOW_BODY", "ResponsesServer"]
