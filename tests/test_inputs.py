"""Issue #14, finding 4: repository input is data, never git options (and #19: a prompt has text).

The same checks refuse a bad ref or URL in three places: the pure validators (core.inputs), the
API model the operator parses a dispatch with (InvalidSpec before any child object exists), and
the CRD's CEL rules the apiserver evaluates (checked offline with cel-python, RE2 like the
apiserver's).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from buildstudio.api import inputs
from buildstudio.api.dispatch import BuildDispatchSpec
from buildstudio.commands import local_spec
from buildstudio.core import machine as m
from buildstudio.core.body import parse_dispatch
from buildstudio.core.cel import cel_violations
from buildstudio.core.settings import Settings
from tests import crdcheck

OPTION_REFS = ["--pathspec-from-file=/etc/passwd", "-f", "--orphan=x", "-b"]
BAD_REFS = [*OPTION_REFS, "a..b", "x.lock", ".hidden", "a/.b", "x/", "/x", "@", "a@{1}", "a b", "a~1", "a^", "a:b",
            "a?", "a*", "a[", "a\\b", "a//b", "a.", "tab\there", "nul\x00"]  # fmt: skip
GOOD_REFS = ["main", "v1.2.3", "feature/x", "release-1.0", "refs/pull/12/head", "HEAD", "a" * 7,
             "0123456789abcdef0123456789abcdef01234567", "9f" * 32, "user@host", "+plus"]  # fmt: skip

BAD_URLS = {
    "ssh://-oProxyCommand=x/y": "must not start with '-'",
    "git@-oProxyCommand=x:y": "must not start with '-'",
    "ssh://-u@host/r.git": "must not start with '-'",
    "ssh://u@-host/r.git": "must not start with '-'",
    "-u@host:r.git": "must not start with '-'",
    "file:///x": "file://",
    "file://host/x": "file://",
    "https://h:99999/x.git": "port",
    "https://h:0/x.git": "port",
    "ssh://git@h:65536/x.git": "port",
    "http://h:/x.git": "port",
    "ext::sh -c x": "ext::",
    "ext::sh": "ext::",
    "fd::17": "other transports",
    "git://h/x.git": "other transports",
    "ftp://h/x.git": "other transports",
    "calc.git": "must be https://",
    "/srv/git/r.git": "must be https://",
    "https://u:pw@h/x.git": "password",
    "https://h/a b.git": "whitespace",
    "https://h/x\n.git": "whitespace",
    "https://h": "scheme://[user@]host[:port]/path",
    "https://h%2d/x": "scheme://[user@]host[:port]/path",
}
GOOD_URLS = [
    "https://github.com/o/r.git",
    "https://git.example.internal:8443/platform/calc.git",
    "http://10.0.0.5:8080/r.git",
    "ssh://git@github.com/o/r.git",
    "ssh://git@host:2222/srv/r.git",
    "ssh://[fd00::1]:22/r.git",
    "https://[2001:db8::1]/r.git",
    "git@github.com:o/r.git",
    "deploy@git.example:/srv/r.git",
    "https://oauth2@gitlab.example/g/r.git",
    "https://h:65535/r.git",
    "https://h:1/r.git",
]


def _dispatch(repo: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "buildstudio.dpf.dev/v1alpha1",
        "kind": "BuildDispatch",
        "metadata": {"name": "d", "namespace": "n", "uid": "u", "creationTimestamp": "2026-11-25T10:00:00Z"},
        "spec": {"prompt": "p", "model": "qwen3-coder", "repo": repo},
    }


def _cel_refuses(rules: tuple[inputs.Rule, ...], value: str) -> list[str]:
    schema = {"type": "string", "x-kubernetes-validations": [{"rule": r.cel(), "message": r.message} for r in rules]}
    return [v.message for v in cel_violations(schema, value)]


# ---------------------------------------------------------------- the validators (pure)


@pytest.mark.parametrize("ref", BAD_REFS)
def test_bad_refs_are_refused(ref: str) -> None:
    assert inputs.check_ref(ref) is not None


@pytest.mark.parametrize("ref", OPTION_REFS)
def test_option_like_refs_are_refused_as_options(ref: str) -> None:
    assert inputs.check_ref(ref) == "a git ref must not start with '-' (git would read it as an option)"


@pytest.mark.parametrize("ref", GOOD_REFS)
def test_good_refs_are_accepted(ref: str) -> None:
    assert inputs.check_ref(ref) is None


@pytest.mark.parametrize(("url", "why"), BAD_URLS.items())
def test_bad_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    problem = inputs.check_repo_url(url, local=False)
    assert problem is not None and why in problem


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_urls_are_accepted(url: str) -> None:
    assert inputs.check_repo_url(url, local=False) is None
    assert inputs.check_repo_url(url, local=True) is None


@pytest.mark.parametrize("url", [".", "..", "./repo", "/srv/r.git", "~/r", "My Repos/calc", "file:///srv/r.git"])
def test_local_mode_takes_local_paths(url: str) -> None:
    assert inputs.check_repo_url(url, local=True) is None
    assert inputs.check_repo_url(url, local=False) is not None


@pytest.mark.parametrize("url", ["-u", "--upload-pack=touch x", "ext::sh -c x", "file://host/x", "a:b", "x\x01"])
def test_local_mode_still_refuses_options_and_transports(url: str) -> None:
    assert inputs.check_repo_url(url, local=True) is not None


@pytest.mark.parametrize("value", BAD_REFS + GOOD_REFS)
def test_ref_rules_mean_the_same_in_python_and_in_cel(value: str) -> None:
    """The CRD's CEL rules are generated from the same Rule list: same verdict, same message."""
    python = [r.message for r in inputs.REF_RULES if r.broken_by(value)]
    assert _cel_refuses(inputs.REF_RULES, value) == python


@pytest.mark.parametrize("value", [*BAD_URLS, *GOOD_URLS, ".", "/srv/r.git", "~/r"])
def test_url_rules_mean_the_same_in_python_and_in_cel(value: str) -> None:
    python = [r.message for r in inputs.URL_RULES if r.broken_by(value)]
    assert _cel_refuses(inputs.URL_RULES, value) == python


# ---------------------------------------------------------------- the operator: InvalidSpec, nothing created


@pytest.mark.parametrize(
    ("repo", "field"),
    [({"url": "https://g/r.git", "ref": ref}, "spec.repo.ref") for ref in OPTION_REFS]
    + [({"url": url}, "spec.repo.url") for url in BAD_URLS],
)
def test_the_operator_refuses_the_dispatch_before_any_child_object(repo: dict[str, str], field: str) -> None:
    d, error = parse_dispatch(_dispatch(repo), datetime(2026, 11, 25, tzinfo=UTC))
    assert d is None and error.startswith(f"{field}: ")
    fallback = m.Dispatch("d", "n", "u", 1, datetime(2026, 11, 25, tzinfo=UTC), BuildDispatchSpec(prompt="-"))
    step = m.invalid_spec(fallback, error, datetime(2026, 11, 25, tzinfo=UTC), Settings())
    done = next(c for c in step.status["conditions"] if c["type"] == "Succeeded")
    assert (done["status"], done["reason"]) == ("False", "InvalidSpec") and field in done["message"]
    assert not any(isinstance(a, m.Launch) for a in step.actions)


@pytest.mark.parametrize("ref", GOOD_REFS)
def test_the_operator_accepts_good_refs(ref: str) -> None:
    body = _dispatch({"url": "git@github.com:o/r.git", "ref": ref})
    d, error = parse_dispatch(body, datetime(2026, 11, 25, tzinfo=UTC))
    assert error == "" and d is not None and d.spec.repo is not None and d.spec.repo.ref == ref


# ---------------------------------------------------------------- the apiserver: the CRD's own rules


@pytest.mark.parametrize("ref", [*OPTION_REFS, "a..b", "x.lock", "a@{1}"])
def test_the_crd_refuses_bad_refs(ref: str) -> None:
    found = crdcheck.errors(_dispatch({"url": "https://g/r.git", "ref": ref}))
    assert found and all(msg.startswith(".spec.repo.ref: a git ref") for msg in found), found


@pytest.mark.parametrize(("url", "why"), BAD_URLS.items())
def test_the_crd_refuses_bad_urls(url: str, why: str) -> None:
    found = crdcheck.errors(_dispatch({"url": url}))
    assert found and all(msg.startswith(".spec.repo.url: ") for msg in found), found
    assert any(why in msg for msg in found), found


@pytest.mark.parametrize("url", GOOD_URLS)
@pytest.mark.parametrize("ref", ["main", "v1.2.3", "feature/x", "0123456789abcdef0123456789abcdef01234567"])
def test_the_crd_accepts_good_urls_and_refs(url: str, ref: str) -> None:
    assert crdcheck.errors(_dispatch({"url": url, "ref": ref})) == []


# ---------------------------------------------------------------- local mode (`buildstudio run --local`)


def test_local_manifests_may_name_a_local_repository() -> None:
    manifest = _dispatch({"url": "file:///srv/r.git", "ref": "dev"})
    assert local_spec.manifest_errors(manifest) == []
    assert crdcheck.errors(manifest) != []  # the cluster would not take it
    manifest["spec"]["repo"] = {"url": "ext::sh -c x"}
    assert any("spec.repo.url" in e for e in local_spec.manifest_errors(manifest))
    manifest["spec"]["repo"] = {"url": "file:///srv/r.git", "ref": "--orphan=x"}
    assert any("spec.repo.ref" in e and "option" in e for e in local_spec.manifest_errors(manifest))


def test_local_run_refuses_option_like_input_and_takes_paths() -> None:
    assert local_spec.repo_problem({"repo": ".", "ref": "main"}) is None
    assert local_spec.repo_problem({"repo": "/srv/r.git"}) is None
    assert "option" in (local_spec.repo_problem({"repo": ".", "ref": "--orphan=x"}) or "")
    assert local_spec.repo_problem({"repo": "--upload-pack=x"}) is not None
    assert local_spec.repo_problem({"repo": "ssh://-oProxyCommand=x/y"}) is not None


# ---------------------------------------------------------------- prompts (#19): CLI and CRD refuse the same

CRDS = Path(__file__).resolve().parents[1] / "crds"
SPACES = [chr(c) for c in range(0x110000) if chr(c).isspace()]  # what `buildstudio run` strips
BLANK_PROMPTS = ["", " ", "\t\n  \r\n", "\x0b\x0c", "\x1c\x1f", "\xa0", "\u3000\u2028", "".join(SPACES)]
GOOD_PROMPTS = ["x", "  Fix the flaky test\n", "\u200bzero-width space is no whitespace", "\x00", "'\\'"]


@pytest.mark.parametrize("value", [*BLANK_PROMPTS, *SPACES, *GOOD_PROMPTS], ids=repr)
def test_prompt_rules_mean_the_same_in_python_and_in_cel(value: str) -> None:
    python = [r.message for r in inputs.PROMPT_RULES if r.broken_by(value)]
    assert _cel_refuses(inputs.PROMPT_RULES, value) == python
    assert bool(python) == (not value.strip())  # refused exactly when the CLI's strip() leaves nothing


@pytest.mark.parametrize("prompt", BLANK_PROMPTS[1:], ids=repr)  # "" is minLength's
def test_the_crd_and_the_model_refuse_a_whitespace_prompt(prompt: str) -> None:
    manifest = _dispatch({"url": "https://g/r.git"})
    manifest["spec"]["prompt"] = prompt
    assert crdcheck.errors(manifest) == [f".spec.prompt: {inputs.PROMPT_RULES[0].message}"]
    assert any("only whitespace" in e for e in local_spec.manifest_errors(manifest))
    with pytest.raises(ValueError, match="only whitespace"):
        BuildDispatchSpec(prompt=prompt)


def test_cel_literals_carry_no_character_a_yaml_parser_breaks_lines_at() -> None:
    """U+0085/U+2028/U+2029 are line breaks to YAML 1.1 parsers: in the CRD they are CEL escapes."""
    rule = inputs.PROMPT_RULES[0].cel()
    assert rule.isascii() and "\\u2028" in rule
    crd = yaml.safe_load((CRDS / "buildstudio.dpf.dev_builddispatches.yaml").read_text(encoding="utf-8"))
    prompt = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["prompt"]
    assert prompt["x-kubernetes-validations"][0]["rule"] == rule  # the file reads back as generated
