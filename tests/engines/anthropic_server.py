"""The scripted AnthropicServer lives in ``buildstudio.commands.scripted_anthropic``; re-exported for the tests."""

from __future__ import annotations

from buildstudio.commands.scripted_anthropic import OVERFLOW_BODY, OVERLOADED_BODY, AnthropicServer

__all__ = ["OVERFLOW_BODY", "OVERLOADED_BODY", "AnthropicServer"]
