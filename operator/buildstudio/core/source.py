"""What a review reads of its source dispatch (pure): the diff, its size and digest, the final answer.

The operator fills a ``ReviewSource`` from the source dispatch's status and, when it can, the
whole patch from the owned patch ConfigMap (``binaryData["patch.gz"]``, gzip) with its
``patch-sha256`` annotation. The digest is what ties a review to the exact diff it judged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass, field

from buildstudio.api.dispatch import BuildDispatchStatus
from buildstudio.protocol.records import DiffStat

MAX_PATCH_BYTES = 8 * 1024 * 1024  # decompressed; far above any prompt budget, bounds a gzip bomb


@dataclass(frozen=True)
class ReviewSource:
    """The source dispatch's result, as the review sees it."""

    dispatch: str
    diff: str  # the whole patch when available, else the status excerpt
    diff_stat: DiffStat = field(default_factory=DiffStat)
    diff_bytes: int = 0  # size of the whole diff; 0: the size of `diff`
    diff_truncated: bool = False  # `diff` is only a prefix of the whole diff
    final_text: str = ""
    patch_config_map: str = ""
    sha256: str = ""  # of the whole patch (the ConfigMap's patch-sha256 annotation); "" : computed

    @property
    def total_bytes(self) -> int:
        return max(self.diff_bytes, len(self.diff.encode()))

    @property
    def digest(self) -> str:
        """sha256 of the diff under review; a computed digest of a prefix would name another diff."""
        if self.sha256:
            return self.sha256
        return "" if self.diff_truncated else hashlib.sha256(self.diff.encode()).hexdigest()


def decode_patch(data_b64: str, *, max_bytes: int = MAX_PATCH_BYTES) -> tuple[str, bool]:
    """The patch text of a ConfigMap's ``patch.gz`` (base64 gzip); (text, cut) — at most ``max_bytes``.

    Raises ValueError on data that is not base64 gzip. A gzip member cut short (a capped patch)
    yields what could be inflated, marked as cut.
    """
    if not data_b64:
        return "", False
    try:
        raw = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"patch is not base64: {exc}") from None
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, max_bytes)
    except zlib.error as exc:
        raise ValueError(f"patch is not gzip: {exc}") from None
    cut = bool(inflater.unconsumed_tail) or not inflater.eof
    return out.decode("utf-8", "replace"), cut


def from_status(
    name: str,
    status: BuildDispatchStatus,
    *,
    patch: str | None = None,
    patch_sha256: str = "",
    patch_truncated: bool = False,
) -> ReviewSource:
    """A review source from a dispatch's status, preferring the whole patch when the caller has it."""
    # The status's DiffStat is the record's own model (one schema): a copy, not a field-by-field rebuild.
    diff_stat = status.diff_stat.model_copy() if status.diff_stat is not None else DiffStat()
    whole = patch is not None and not patch_truncated
    return ReviewSource(
        dispatch=name,
        diff=patch if patch is not None else status.diff,
        diff_stat=diff_stat,
        diff_bytes=status.diff_bytes,
        diff_truncated=not whole and (patch_truncated or status.diff_truncated),
        final_text=status.final_text,
        patch_config_map=status.patch_config_map,
        sha256=patch_sha256,
    )
