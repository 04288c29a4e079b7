"""Run a kopf operator in its own thread and event loop, pointed at the emulator.

kopf must not share the test's loop with kmock: kopf's shutdown cancels every task of its
loop, kmock's connection handlers included (see the shared testing notes).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import kopf

SettingsHook = Callable[[kopf.OperatorSettings], None]

# The emulator URL the login handler hands out; set by the fixture for the current test.
_current_server: list[str] = []
_registries_with_login: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


def _emulator_login(**_: Any) -> kopf.ConnectionInfo:
    if not _current_server:
        raise kopf.LoginError("no Kubernetes emulator is running for this test")
    return kopf.ConnectionInfo(server=_current_server[-1], insecure=True, default_namespace="default",
                               priority=1000)


def ensure_login(registry: kopf.OperatorRegistry) -> None:
    """Add (once) a login handler that points kopf at the current test's emulator."""
    if registry not in _registries_with_login:
        kopf.on.login(registry=registry, id="kube-emulator-login")(_emulator_login)
        _registries_with_login.add(registry)


def fast_settings() -> kopf.OperatorSettings:
    """Settings that make kopf react and stop quickly against a local emulator."""
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.watching.connect_timeout = 2
    settings.watching.reconnect_backoff = 0.05
    settings.networking.request_timeout = 10
    settings.networking.connect_timeout = 2
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1.0]
    settings.queueing.idle_timeout = 1.0
    settings.queueing.exit_timeout = 1.0
    settings.queueing.error_delays = [0.1, 0.2, 0.5, 1.0]
    settings.execution.default_backoff = 0.5  # retry of handlers that raised arbitrary errors
    settings.scanning.disabled = True  # resources are registered before start; no CRD watching
    settings.posting.level = logging.INFO
    settings.process.ultimate_exiting_timeout = 5
    settings.background.cancellation_polling = 0.5
    return settings


class KopfOperator:
    """One operator instance. start() / stop() / restart(); `ready` and `alive` for assertions."""

    def __init__(self, server: str, *, registry: kopf.OperatorRegistry, settings_hook: SettingsHook | None,
                 namespaces: Collection[str], memo: object | None) -> None:
        self.server = server
        self.registry = registry
        self.settings_hook = settings_hook
        self.namespaces = list(namespaces)
        self.memo = memo
        self.error: BaseException | None = None
        self.settings: kopf.OperatorSettings | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _main(self) -> None:
        settings = fast_settings()
        if self.settings_hook is not None:
            self.settings_hook(settings)
        self.settings = settings
        try:
            asyncio.run(kopf.operator(
                registry=self.registry, settings=settings, standalone=True,
                clusterwide=not self.namespaces, namespaces=self.namespaces,
                stop_flag=self._stop, ready_flag=self._ready, memo=self.memo,
            ))
        except BaseException as e:  # reported by stop() and the fixture's teardown
            self.error = e

    async def start(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a bounded wait)
        """Start the thread and wait (bounded) until kopf says it is ready."""
        if self.alive:
            raise RuntimeError("the operator is already running")
        _current_server.append(self.server)
        ensure_login(self.registry)
        self.error = None
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._main, name="kopf-operator", daemon=True)
        self._thread.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._ready.is_set():
            if not self._thread.is_alive():
                raise RuntimeError(f"the operator exited during start-up: {self.error!r}") from self.error
            if loop.time() > deadline:
                raise TimeoutError(f"the operator was not ready within {timeout}s")
            await asyncio.sleep(0.02)

    async def stop(self, *, timeout: float = 15.0) -> None:  # noqa: ASYNC109 (a bounded wait)
        """Ask kopf to stop and verify (bounded) that its thread has ended."""
        if self._thread is None:
            return
        self._stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._thread.is_alive():
            if loop.time() > deadline:
                raise TimeoutError(f"the operator thread did not stop within {timeout}s")
            await asyncio.sleep(0.05)
        self._thread = None
        if self.server in _current_server:
            _current_server.remove(self.server)
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise RuntimeError(f"the operator failed: {self.error!r}") from self.error

    async def restart(self, *, timeout: float = 15.0) -> None:  # noqa: ASYNC109 (a bounded wait)
        await self.stop(timeout=timeout)
        await self.start(timeout=timeout)


# What the `kopf_operator` fixture gives: `await factory(registry, settings_hook=..., ...)`.
KopfOperatorFactory = Callable[..., Awaitable[KopfOperator]]
