"""The IO shell of the preflight: a few bounded HTTP requests, then the pure backend functions.

Every request has httpx connect (DNS + TCP + TLS) and read (headers, each body read) timeouts
AND an overall deadline, so a server that drips bytes cannot hold a probe open; bodies are
streamed and reading stops at `max_body_bytes`. The listing and then the auxiliary routes (`/`,
backend context routes; at most four) share one budget, `min(total - 0.1, connect + 2 * read)`
(2.4 s by default; 0.1 s is kept to build the verdict), and `probe` wraps the whole run in
`asyncio.timeout(total)` as the last bound, so a refused, black-holed, silent, stalled or
unresolvable endpoint is judged within 2.5 s whatever it does; a route skipped for lack of
budget is a note.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import certifi
import httpx

from buildstudio.core import backends
from buildstudio.core.observation import (
    ANSWERED_KINDS,
    MAX_ID_CHARS,
    MAX_MODELS,
    MAX_NOTES,
    Backend,
    ContextReport,
    ContextSource,
    FailureKind,
    Observation,
    ProbeTarget,
    clip,
)

_ERROR_BODY_BYTES = 4096  # enough of a 4xx/5xx body for the detail line


class ProbeFailure(Exception):
    def __init__(self, kind: FailureKind, detail: str, http_status: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.http_status = http_status


@dataclass(frozen=True)
class Fetched:
    status: int
    body: bytes
    elapsed_ms: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """Parsed body; ProbeFailure(BAD_BODY) when it is not JSON."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProbeFailure(FailureKind.BAD_BODY, f"not JSON ({exc}): {self.body[:80]!r}") from None


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, its causes/contexts and group members (anyio wraps refusals in a group)."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack and len(seen) < 32:
        current = stack.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        stack += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            stack += list(current.exceptions)
    return seen


def classify(exc: BaseException) -> FailureKind:
    """Map a transport exception to a failure kind (pure; tested with real loopback failures)."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return FailureKind.TIMEOUT
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return FailureKind.INVALID_URL
    if isinstance(exc, httpx.ConnectError):
        chain = _causes(exc)
        if any(isinstance(c, ssl.SSLError | ssl.CertificateError) for c in chain):
            return FailureKind.TLS
        if any(isinstance(c, socket.gaierror) for c in chain):
            return FailureKind.DNS
        if any(isinstance(c, ConnectionRefusedError) for c in chain):
            return FailureKind.REFUSED
        return FailureKind.CONNECT
    return FailureKind.PROTOCOL


async def fetch(
    client: httpx.AsyncClient,
    target: ProbeTarget,
    method: str,
    url: str,
    *,
    json_body: dict[str, Any] | None = None,
    budget: float | None = None,
) -> Fetched:
    """One request with a hard deadline and a bounded body read; transport errors → ProbeFailure.

    The deadline is `connect + read`, or `budget` seconds when that is shorter.
    """
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    timeout = httpx.Timeout(
        connect=target.connect_timeout,
        read=target.read_timeout,
        write=target.read_timeout,
        pool=target.connect_timeout,
    )
    limit = target.max_body_bytes
    deadline = target.connect_timeout + target.read_timeout
    if budget is not None:
        deadline = min(deadline, budget)
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(deadline),
            client.stream(method, url, headers=headers, json=json_body, timeout=timeout) as response,
        ):
            if not 200 <= response.status_code < 300:
                limit = min(limit, _ERROR_BODY_BYTES)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit and response.status_code < 300:
                raise ProbeFailure(
                    FailureKind.TOO_LARGE, f"{url}: Content-Length {declared} exceeds {limit} bytes; not read"
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    if response.status_code >= 300:
                        del body[limit:]  # an error body is only kept for the detail line
                        break
                    raise ProbeFailure(
                        FailureKind.TOO_LARGE, f"{url}: body exceeds {limit} bytes; stopped at {len(body)}"
                    )
            return Fetched(response.status_code, bytes(body), int((time.monotonic() - started) * 1000))
    except ProbeFailure:
        raise
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
        kind = classify(exc)
        waited = time.monotonic() - started
        message = str(exc) or type(exc).__name__
        raise ProbeFailure(kind, f"{method} {url}: {kind.value} after {waited:.2f}s ({message})") from exc


# The requests' deadline ends a probe this much before the whole-probe bound, leaving time to close
# the connection and build the observation; the `asyncio.timeout` at the bound only catches the rest.
_VERDICT_RESERVE = 0.1


class _Probe:
    """State of one probe run; each method is one step of docs/model-endpoints.md §2."""

    def __init__(self, client: httpx.AsyncClient, target: ProbeTarget, model: str) -> None:
        self.client = client
        self.target = target
        self.model = model
        self.base = target.base_url.rstrip("/")
        self.root = backends.root_url(self.base)
        self.notes: list[str] = []
        self.lmstudio_body: Any = None
        budget = min(target.total_timeout - _VERDICT_RESERVE, target.connect_timeout + 2 * target.read_timeout)
        self.deadline = time.monotonic() + budget

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(clip(text, 160))

    async def aux_fetch(self, method: str, path: str, json_body: dict[str, Any] | None = None) -> Fetched:
        """A request after the listing, within what is left of the probe's budget."""
        budget = self.deadline - time.monotonic()
        if budget < 0.01:
            raise ProbeFailure(FailureKind.TIMEOUT, f"{method} {path}: skipped, probe budget spent")
        return await fetch(self.client, self.target, method, self.root + path, json_body=json_body, budget=budget)

    async def aux_json(self, method: str, path: str, json_body: dict[str, Any] | None = None) -> Any:
        """A backend-specific route: any failure is a note, never a probe failure."""
        try:
            fetched = await self.aux_fetch(method, path, json_body)
            if not fetched.ok:
                raise ProbeFailure(FailureKind.HTTP_STATUS, f"{method} {path}: HTTP {fetched.status}")
            return fetched.json()
        except ProbeFailure as failure:
            self.note(failure.detail)
            return None

    async def root_text(self) -> str:
        try:
            fetched = await self.aux_fetch("GET", "/")
        except ProbeFailure as failure:
            self.note(failure.detail)
            return ""
        return fetched.body[:200].decode("utf-8", "replace") if fetched.ok else ""

    async def identify(self, cards: list[dict[str, Any]]) -> tuple[Backend, str]:
        if self.target.backend is not Backend.AUTO:
            return self.target.backend, "backend hint"
        backend, evidence = backends.identify_from_cards(cards)
        if backend is None:
            backend, evidence = backends.identify_from_root_text(await self.root_text())
        if backend is None:
            body = await self.aux_json("GET", "/api/v1/models")
            if backends.is_lmstudio_native(body):
                self.lmstudio_body = body
                backend, evidence = Backend.LMSTUDIO, "/api/v1/models has models[].max_context_length"
        if backend is None:
            return Backend.OPENAI, "no backend signature: generic OpenAI-compatible"
        return backend, evidence

    async def context(self, backend: Backend, card: dict[str, Any], model_id: str) -> ContextReport:
        report = backends.context_from_card(backend, card)
        if backend is Backend.LLAMACPP:
            props = backends.llamacpp_props_context(await self.aux_json("GET", "/props"))
            if props:
                report.allocated, report.allocated_source = props, ContextSource.LLAMACPP_PROPS
        elif backend is Backend.OLLAMA:
            loaded = backends.ollama_ps_context(await self.aux_json("GET", "/api/ps"), model_id)
            if loaded:
                report.allocated, report.allocated_source = loaded, ContextSource.OLLAMA_PS
            else:
                modelfile, trained = backends.ollama_show_context(
                    await self.aux_json("POST", "/api/show", {"model": model_id})
                )
                if modelfile:
                    report.allocated, report.allocated_source = modelfile, ContextSource.OLLAMA_MODELFILE
                if trained:
                    report.trained, report.trained_source = trained, ContextSource.OLLAMA_TRAINED
        elif backend is Backend.DMR:
            configured = backends.dmr_configure_context(
                await self.aux_json("GET", f"/engines/_configure?model={model_id}"), model_id
            )
            if configured:
                report.allocated, report.allocated_source = configured, ContextSource.DMR_CONFIGURE
            elif not report.allocated:
                native = await self.aux_json("GET", f"/models/{model_id}")
                packaged, trained = backends.dmr_native_context(native)
                if packaged:
                    report.allocated, report.allocated_source = packaged, ContextSource.DMR_PACKAGED_NATIVE
                if trained:
                    report.trained, report.trained_source = trained, ContextSource.DMR_TRAINED
        elif backend is Backend.LMSTUDIO:
            body = self.lmstudio_body
            if body is None:
                body = await self.aux_json("GET", "/api/v1/models")
            loaded, trained = backends.lmstudio_context(body, model_id)
            if loaded:
                report.allocated, report.allocated_source = loaded, ContextSource.LMSTUDIO_LOADED
            if trained:
                report.trained, report.trained_source = trained, ContextSource.LMSTUDIO_TRAINED
        return report

    async def run(self) -> Observation:
        started = time.monotonic()
        common: dict[str, Any] = {
            "base_url": self.target.base_url,
            "model": self.model,
            "backend_hint": self.target.backend,
            "observed_at": datetime.now(UTC),
        }
        try:
            if problem := backends.base_url_problem(self.target.base_url):
                raise ProbeFailure(FailureKind.INVALID_URL, problem)
            listing = await fetch(
                self.client, self.target, "GET", self.base + "/models", budget=self.deadline - time.monotonic()
            )
            if not listing.ok:
                snippet = listing.body[:160].decode("utf-8", "replace")
                raise ProbeFailure(
                    FailureKind.HTTP_STATUS, f"GET /models: HTTP {listing.status}: {snippet}", listing.status
                )
            cards = backends.listing_cards(listing.json())
            if cards is None:
                shown = listing.body[:80]
                raise ProbeFailure(FailureKind.BAD_BODY, f"GET /models: not an OpenAI list: {shown!r}")
        except ProbeFailure as failure:
            return Observation(
                **common,
                reachable=failure.kind in ANSWERED_KINDS,
                failure=failure.kind,
                http_status=failure.http_status,
                detail=clip(failure.detail),
                duration_ms=int((time.monotonic() - started) * 1000),
            )

        backend, evidence = await self.identify(cards)
        ids = [card["id"] for card in cards]
        match = backends.match_model(backend, self.model, ids)
        context = ContextReport()
        if match.present and match.matched_id is not None:
            card = backends.find_card(cards, match.matched_id) or {}
            context = await self.context(backend, card, match.matched_id)
        return Observation(
            **common,
            reachable=True,
            http_status=listing.status,
            backend=backend,
            backend_evidence=evidence,
            models=[clip(i, MAX_ID_CHARS) for i in ids[:MAX_MODELS]],
            models_total=len(ids),
            model_present=match.present,
            matched_id=match.matched_id,
            match_rule=match.rule,
            context=context,
            latency_ms=listing.elapsed_ms,
            duration_ms=int((time.monotonic() - started) * 1000),
            notes=self.notes,
        )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Building a default context loads the CA bundle (~20 ms); probes without a shared client reuse one.
    return ssl.create_default_context(cafile=certifi.where())  # the bundle httpx itself would use


def new_client() -> httpx.AsyncClient:
    """A client for probes. `trust_env=False`: a model service is local, never behind HTTP(S)_PROXY."""
    return httpx.AsyncClient(
        verify=_tls_context(), trust_env=False, follow_redirects=False, timeout=httpx.Timeout(5.0, connect=2.0)
    )


async def probe(target: ProbeTarget, model: str, *, client: httpx.AsyncClient | None = None) -> Observation:
    """Probe `target` for `model`. Never raises for endpoint behaviour: failures are in the Observation."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(target.total_timeout):
            if client is not None:
                return await _Probe(client, target, model).run()
            async with new_client() as own:
                return await _Probe(own, target, model).run()
    except TimeoutError:
        waited = time.monotonic() - started
        return Observation(
            base_url=target.base_url,
            model=model,
            backend_hint=target.backend,
            observed_at=datetime.now(UTC),
            reachable=False,
            failure=FailureKind.TIMEOUT,
            detail=clip(f"probe: {FailureKind.TIMEOUT.value} after {waited:.2f}s (whole-probe bound)"),
            duration_ms=int(waited * 1000),
        )
