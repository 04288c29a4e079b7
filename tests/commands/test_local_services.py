"""The model service of a local run: auto-detection on the default ports, and replays found by name."""

from __future__ import annotations

import socket
from pathlib import Path

from buildstudio.commands import local_services
from buildstudio.commands.scripted_server import ScriptedServer
from tests.runner_harness import REPO_ROOT


def test_no_service_message_names_what_was_tried_and_how_to_start() -> None:
    tried = [(c, "no answer (ConnectError)") for c in local_services.LOCAL_SERVICES]
    msg = local_services.no_service_message(tried)
    for c in local_services.LOCAL_SERVICES:
        assert c.base_url in msg and c.how_to_start in msg
    assert "--base-url" in msg and "replay:" in msg
    ports = {c.base_url.split(":")[2].split("/")[0] for c in local_services.LOCAL_SERVICES}
    assert ports == {"12434", "11434", "8080", "8000", "1234"}


async def test_detect_service_takes_the_first_that_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    async with ScriptedServer([{"text": "x"}], model="served-model") as srv:
        cands = [
            local_services.Candidate("Dead", f"http://127.0.0.1:{dead}/v1", "start dead"),
            local_services.Candidate("Scripted", srv.base_url, "n/a"),
        ]
        found, tried, ids = await local_services.detect_service(cands)
    assert found is not None and found.name == "Scripted" and ids == ["served-model"]
    assert [c.name for c, _ in tried] == ["Dead"]
    found, tried, _ = await local_services.detect_service(cands[:1])
    assert found is None and "no answer" in tried[0][1]


def test_replay_is_found_from_anywhere(tmp_path: Path) -> None:
    shipped = REPO_ROOT / "examples" / "replays" / "add-subtract.json"
    assert local_services.resolve_replay("examples/replays/add-subtract.json").resolve() == shipped
    assert local_services.resolve_replay("add-subtract") == shipped
    own = tmp_path / "r.json"
    own.write_text("[]")
    assert local_services.resolve_replay(str(own)) == own
