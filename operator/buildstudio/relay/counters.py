"""What the relay did, for the dispatch record."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RelayCounters(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    repaired: int = 0  # text-format calls turned into API tool_calls
    left_as_text: int = Field(0, alias="leftAsText")  # call-like markup passed on as text
    reasons: dict[str, int] = Field(default_factory=dict)  # why, for left_as_text (parse.Reason values)

    def left(self, reason: str) -> None:
        self.left_as_text += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
