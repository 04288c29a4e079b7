from __future__ import annotations
from dataclasses import dataclass
@dataclass(frozen=True)
class FileSpec:
    root: str
    path: str
    content: str
    mode: int = 0o600
