"""``python -m buildstudio.relay --upstream URL [--host H] [--port 0] [--port-file F]``.

Serves until SIGTERM/SIGINT, then prints the counters as one JSON line on stdout.
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

from buildstudio.relay.server import Relay


def _write_port(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(port), encoding="utf-8")
    tmp.replace(path)  # readers never see a half-written file


async def _serve(args: argparse.Namespace) -> None:
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
    )
    async with relay:
        if args.port_file:
            _write_port(Path(args.port_file), relay.port)
        print(f"relay listening on {relay.base_url} -> {relay.upstream}", file=sys.stderr, flush=True)
        await stop.wait()
    print(json.dumps(relay.counters.model_dump(by_alias=True)), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m buildstudio.relay", description=__doc__)
    ap.add_argument("--upstream", required=True, help="model service base URL, e.g. http://model:8000/v1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--read-timeout", type=float, default=600.0, help="longest gap between upstream bytes")
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
