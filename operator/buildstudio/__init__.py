"""Build Studio operator: coding-agent dispatches on the install's own local LLM."""

__version__ = "0.1.0"
