"""Tool-call repair relay between opencode and the model service (issue 7)."""

from buildstudio.relay.counters import RelayCounters
from buildstudio.relay.server import Relay

__all__ = ["Relay", "RelayCounters"]
