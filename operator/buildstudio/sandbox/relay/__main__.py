"""``python -m buildstudio.sandbox.relay --upstream URL [--url-file F] [--api-key-file K] [--engine E] [--no-repair]``.

In the sandbox pod this is the ``relay`` container: its own uid, the only holder of the model
service's key (``--api-key-file``, a Secret volume mounted nowhere else). The engine talks to it
on loopback with no key; it forwards to the model service with the key added, and (unless
``--no-repair``) turns text-format tool calls into API tool calls. ``--url-file`` receives the
relay's base URL once it listens (the agent reads it); ``--counters-file`` the repair counters
after every request. Serves until SIGTERM/SIGINT, then prints the counters as one JSON line.

``--engine claude|codex|grok`` speaks for a cloud engine's CLI: the key goes in that vendor's header
(claude: ``x-api-key``; codex, grok: ``Authorization: Bearer``), grok's xAI-only request fields are
dropped and its tokens counted here (it prints none). ``--auth-header``, ``--strip-field`` and
``--count-usage`` set the same things one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from buildstudio.engines.adapters import adapter_for
from buildstudio.sandbox.relay.server import CREDENTIAL_HEADERS, Relay

MAX_KEY_BYTES = 16 * 1024


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # readers never see a half-written file


def read_key(path: Path) -> str:
    raw = path.read_bytes()[: MAX_KEY_BYTES + 1]
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"{path}: larger than {MAX_KEY_BYTES} bytes, not an API key")
    key = raw.decode("utf-8").strip()
    if not key or any(ch in key for ch in "\r\n"):
        raise ValueError(f"{path}: empty, or more than one line")
    return key


def plaintext_refusal(upstream: str, has_key: bool, allow_plaintext: bool) -> str | None:
    """A key is never sent over plain http unless the admin allowed it (pure)."""
    if has_key and urlsplit(upstream).scheme != "https" and not allow_plaintext:
        return (
            f"refusing to send the model API key to {upstream} over plain http "
            "(use https, or let the admin allow plaintext credentials)"
        )
    return None


async def _serve(args: argparse.Namespace, api_key: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay(
        args.upstream,
        host=args.host,
        port=args.port,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        repair=not args.no_repair,
        api_key=api_key,
        auth_header=args.auth_header,
        strip_fields=tuple(args.strip_field),
        count_usage=args.count_usage,
    )
    counters_file = Path(args.counters_file) if args.counters_file else None
    if counters_file is not None:
        relay.on_counters = lambda data: write_atomic(counters_file, json.dumps(data))
    async with relay:
        if args.port_file:
            write_atomic(Path(args.port_file), str(relay.port))
        if args.url_file:
            write_atomic(Path(args.url_file), relay.base_url)
        print(f"relay listening on {relay.base_url} -> {relay.upstream}", file=sys.stderr, flush=True)
        await stop.wait()
    print(json.dumps(relay.counters.model_dump(by_alias=True)), flush=True)


def engine_defaults(args: argparse.Namespace) -> None:
    """Fill what ``--engine`` implies into the options not given one by one."""
    adapter = adapter_for(args.engine)
    if args.auth_header is None:
        args.auth_header = adapter.auth_header if adapter is not None else "authorization"
    if adapter is not None:
        args.strip_field = [*args.strip_field, *(f for f in adapter.strip_request_fields if f not in args.strip_field)]
        args.count_usage = args.count_usage or not adapter.live_stdout


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m buildstudio.sandbox.relay", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--upstream", required=True, help="model service base URL, e.g. http://model:8000/v1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("--url-file", help="write the relay's base URL here once listening")
    ap.add_argument("--counters-file", help="write the repair counters here after every request")
    ap.add_argument("--api-key-file", help="the model service's API key (added to every upstream request)")
    ap.add_argument("--allow-plaintext-credentials", action="store_true", help="send the key over http too")
    ap.add_argument("--no-repair", action="store_true", help="forward only; no tool-call repair")
    ap.add_argument(
        "--engine",
        choices=["opencode", "claude", "codex", "grok"],
        default="opencode",
        help="the engine whose vendor protocol this relay serves (its auth header, fields, counting)",
    )
    ap.add_argument("--auth-header", choices=sorted(CREDENTIAL_HEADERS), help="the header the key goes in")
    ap.add_argument("--strip-field", action="append", default=[], help="drop this request field (repeatable)")
    ap.add_argument("--count-usage", action="store_true", help="count tokens of whole JSON replies")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--read-timeout", type=float, default=600.0, help="longest gap between upstream bytes")
    args = ap.parse_args(argv)
    engine_defaults(args)
    api_key = None
    if args.api_key_file:
        try:
            api_key = read_key(Path(args.api_key_file))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            print(f"relay: cannot read the API key: {e}", file=sys.stderr)
            return 2
    refusal = plaintext_refusal(args.upstream, api_key is not None, args.allow_plaintext_credentials)
    if refusal:
        print(f"relay: {refusal}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, api_key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
