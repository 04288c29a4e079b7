"""What the relay did, for the dispatch record."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RelayCounters(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    repaired: int = 0  # text-format calls turned into API tool_calls
    left_as_text: int = Field(0, alias="leftAsText")  # call-like markup passed on as text
    reasons: dict[str, int] = Field(default_factory=dict)  # why, for left_as_text (parse.Reason values)
    # Model traffic, counted by the relay itself (grok prints no usage: these are its token counts).
    requests: int = 0  # model requests forwarded
    input_tokens: int = Field(0, alias="inputTokens")  # from whole (non-streamed) JSON replies' usage
    output_tokens: int = Field(0, alias="outputTokens")

    def left(self, reason: str) -> None:
        self.left_as_text += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def add_usage(self, usage: object) -> None:
        """Add an OpenAI (prompt/completion_tokens) or Anthropic/Responses (input/output_tokens) usage."""
        if not isinstance(usage, dict):
            return

        def count(*keys: str) -> int:
            for key in keys:
                value = usage.get(key)
                if type(value) is int and value > 0:
                    return value
            return 0

        self.input_tokens += count("prompt_tokens", "input_tokens")
        self.output_tokens += count("completion_tokens", "output_tokens")
