"""What each coding-agent engine is, as pure data: its command line, its run configuration and
its event stream read into the project's records (opencode, claude, codex, grok)."""
