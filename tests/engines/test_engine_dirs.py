"""An engine CLI's own directories in the work tree are made readable before it runs: grok creates
``.grok/`` with mode 0700, which the reporter (another uid in the pod) could not list."""

from __future__ import annotations

import stat
from pathlib import Path

from buildstudio.sandbox.runner.workspace import precreate_engine_dirs


def test_missing_dirs_are_made_0755_and_existing_ones_left_alone(tmp_path: Path) -> None:
    assert precreate_engine_dirs(tmp_path, [".grok/settings.json", "a/b/c.txt", "top.txt"]) == [
        tmp_path / ".grok", tmp_path / "a", tmp_path / "a" / "b"
    ]
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o755 for d in (tmp_path / ".grok", tmp_path / "a" / "b"))
    assert not (tmp_path / ".grok" / "settings.json").exists()  # the file stays the CLI's to write
    (tmp_path / "own").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert precreate_engine_dirs(tmp_path, ["own/x", "link/x", ".grok/settings.json"]) == []
    assert stat.S_IMODE((tmp_path / "own").stat().st_mode) == 0o700
