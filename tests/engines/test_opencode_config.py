"""The opencode config and sandbox environment (pure; the real binary accepts them in
test_opencode_contract.py and every runner integration test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildstudio.engines import opencode_config as oc


def test_config_matches_the_measured_contract() -> None:
    cfg = oc.build_config(base_url="http://127.0.0.1:5000/v1/", model="qwen3-coder", context=65536, output=8192)
    provider = cfg["provider"]["local"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:5000/v1"  # no trailing slash
    assert provider["options"]["headerTimeout"] == oc.DEFAULT_HEADER_TIMEOUT_MS
    assert provider["options"]["chunkTimeout"] == oc.DEFAULT_CHUNK_TIMEOUT_MS
    assert "apiKey" not in provider["options"]  # no key → no Authorization header
    model = provider["models"]["qwen3-coder"]
    assert model["limit"] == {"context": 65536, "output": 8192}
    assert model["tool_call"] is True
    assert (cfg["permission"], cfg["autoupdate"], cfg["share"]) == ("allow", False, "disabled")
    assert oc.model_ref("qwen3-coder") == "local/qwen3-coder"
    json.dumps(cfg)  # plain JSON data


def test_api_key_is_an_env_reference_never_the_value() -> None:
    cfg = oc.build_config(
        base_url="http://h/v1",
        model="m",
        context=1000,
        output=100,
        api_key_env="MODEL_KEY",
        header_timeout_ms=5000,
        chunk_timeout_ms=6000,
    )
    opts = cfg["provider"]["local"]["options"]
    assert opts["apiKey"] == "{env:MODEL_KEY}"
    assert (opts["headerTimeout"], opts["chunkTimeout"]) == (5000, 6000)


@pytest.mark.parametrize(("context", "output"), [(0, 10), (100, 0), (100, 100), (100, 200)])
def test_limits_are_checked(context: int, output: int) -> None:
    with pytest.raises(ValueError):
        oc.build_config(base_url="http://h/v1", model="m", context=context, output=output)


def test_sandbox_env_is_air_gapped_and_per_run(tmp_path: Path) -> None:
    env = oc.sandbox_env(tmp_path)
    assert env["HOME"] == str(tmp_path)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        assert Path(env[var]).is_relative_to(tmp_path), var
    for flag in (
        "AUTOCOMPACT",
        "MODELS_FETCH",
        "PROJECT_CONFIG",
        "AUTOUPDATE",
        "LSP_DOWNLOAD",
        "SHARE",
        "CLAUDE_CODE",
        "EXTERNAL_SKILLS",
    ):
        assert env[f"OPENCODE_DISABLE_{flag}"] == "1"
    assert env["npm_config_registry"].startswith("http://127.0.0.1:")


def test_write_config_where_opencode_reads_it(tmp_path: Path) -> None:
    cfg = oc.build_config(base_url="http://h/v1", model="m", context=1000, output=100)
    path = oc.write_config(tmp_path, cfg)
    assert path == Path(oc.sandbox_env(tmp_path)["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    assert json.loads(path.read_text()) == cfg
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        assert Path(oc.sandbox_env(tmp_path)[var]).is_dir()
