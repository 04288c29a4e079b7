"""Tool-call repair relay between opencode and the model service (issue 7)."""

from buildstudio.sandbox.relay.counters import RelayCounters
from buildstudio.sandbox.relay.server import Relay

__all__ = ["Relay", "RelayCounters"]
