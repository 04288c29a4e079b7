"""Name resolution for the egress policy (adapter: IO with a timeout, never blocking the loop).

The operator resolves a git remote or an outside model host once, at launch, and names exactly
those addresses in the sandbox's NetworkPolicy (``core/egress.py``). A name that does not
resolve in time resolves to nothing: the policy builder refuses rather than opening a port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

Resolver = Callable[[str, int, float], Awaitable[list[str]]]


async def resolve(host: str, port: int, timeout: float) -> list[str]:  # noqa: ASYNC109  (the bound is the point)
    """The TCP addresses of ``host`` (IPv4 and IPv6, sorted, no duplicates); ``[]`` when it does
    not resolve within ``timeout`` seconds.

    ``getaddrinfo`` runs in the loop's executor; on timeout the wait ends but the lookup thread
    finishes on its own (the system resolver has its own bound)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout=timeout
        )
    except (OSError, TimeoutError, UnicodeError):
        return []
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for _family, _type, _proto, _canon, sockaddr in infos:
        try:
            found.add(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        except ValueError:
            continue
    return [str(ip) for ip in sorted(found, key=lambda ip: (ip.version, ip))]
