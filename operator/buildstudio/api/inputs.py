"""Input is data, never options: pure checks of a prompt, a git ref and a clone URL.

Each check is a list of ``Rule``s (RE2-compatible regular expressions, search semantics). The
same rules are the CRD's CEL ``x-kubernetes-validations`` (``api/dispatch.py``), the API
model's validators and the sandbox clone's defence in depth, so the apiserver, the operator and
the clone refuse the same input with the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """Where ``when`` matches (or always, when empty), ``require`` must match and ``forbid`` must not."""

    message: str
    forbid: str = ""
    require: str = ""
    when: str = ""

    def broken_by(self, value: str) -> bool:
        if self.when and not re.search(self.when, value):
            return False
        if self.forbid and re.search(self.forbid, value):
            return True
        return bool(self.require) and not re.search(self.require, value)

    def cel(self) -> str:
        """The rule as a CEL expression over ``self`` (a string)."""
        parts = []
        if self.forbid:
            parts.append(f"!self.matches({_cel_string(self.forbid)})")
        if self.require:
            parts.append(f"self.matches({_cel_string(self.require)})")
        rule = " && ".join(parts) or "true"
        if self.when:
            rule = f"!self.matches({_cel_string(self.when)}) || ({rule})"
        return rule


def _cel_string(text: str) -> str:
    """A CEL string literal of ``text``; characters beyond ASCII as CEL's \\uXXXX escapes, so the CRD's
    YAML holds none (YAML parsers read U+0085, U+2028 and U+2029 as line breaks)."""
    quoted = text.replace("\\", "\\\\").replace("'", "\\'")
    return "'" + "".join(_cel_char(ch) for ch in quoted) + "'"


def _cel_char(ch: str) -> str:
    if " " <= ch <= "~":
        return ch
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def _first_broken(rules: tuple[Rule, ...], value: str) -> str | None:
    return next((r.message for r in rules if r.broken_by(value)), None)


# ---------------------------------------------------------------------------------- prompts

# What Python's str.isspace() calls whitespace (what `buildstudio run` strips), spelled so that RE2
# reads it alike: ASCII ranges as escapes, the other Unicode spaces as literal characters (RE2 has no
# \u escape, Python's re no \x{...}); \s differs between the two, so it is not used.
_SPACE = r"\t-\r\x1c-\x20" + "\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

PROMPT_RULES: tuple[Rule, ...] = (
    Rule("a prompt must not be empty or only whitespace: the task is its text", require=f"[^{_SPACE}]"),
)


def check_prompt(prompt: str) -> str | None:
    """Why ``prompt`` is no task (empty or whitespace only); None when it has text."""
    return _first_broken(PROMPT_RULES, prompt)


def valid_prompt(prompt: str) -> str:
    """``prompt`` when it is a task; ValueError (the models' validator message) when it is not."""
    problem = check_prompt(prompt)
    if problem:
        raise ValueError(problem)
    return prompt


# ---------------------------------------------------------------------------------- refs

# `git check-ref-format` (one-level names allowed), plus: no leading '-'. A hex commit sha is a
# valid name by these rules too.
REF_RULES: tuple[Rule, ...] = (
    Rule("a git ref must not start with '-' (git would read it as an option)", forbid=r"^-"),
    Rule(
        "a git ref must not contain whitespace, control characters or any of ~ ^ : ? * [ \\",
        forbid=r"[\x00-\x20\x7f~^:?*\[\\]",
    ),
    Rule("a git ref must not contain '..', '@{' or '//'", forbid=r"\.\.|@\{|//"),
    Rule(
        "a git ref must not start or end with '/', end with '.' or be '@', and no part of it may "
        "start with '.' or end with '.lock'",
        forbid=r"^/|/$|\.$|^@$|(^|/)\.|\.lock(/|$)",
    ),
)


def check_ref(ref: str) -> str | None:
    """Why ``ref`` is not a git ref name (by `git check-ref-format`) or a commit sha; None if it is."""
    if not ref:
        return "a git ref must not be empty"
    return _first_broken(REF_RULES, ref)


# ---------------------------------------------------------------------------------- URLs

_SCHEME = r"(https?|ssh)://"
_USER = r"[A-Za-z0-9_][A-Za-z0-9._~+-]*"
_HOST = r"([A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PATH_CHAR = r"[^\x00-\x20\x7f]"
# The authority's host as git sees it: after the scheme and any user@, up to ':' or '/'.
_AUTHORITY_HOST = "^" + _SCHEME + r"([^/@]*@)?(\[[^\]/@]*\]|[^/:@\[]*)"

URL_RULES: tuple[Rule, ...] = (
    Rule(
        "a repository URL must be https://, http://, ssh:// or user@host:path "
        "(file://, ext:: and other transports are not allowed)",
        require=r"^(https?|ssh)://|^[^:/@]+@[^/]*:",
    ),
    Rule("a repository URL must not contain whitespace or control characters", forbid=r"[\x00-\x20\x7f]"),
    Rule(
        "the host and user of a repository URL must not start with '-' (git or ssh would read them as options)",
        forbid=r"^-|^(https?|ssh)://([^/@]*@)?-|^[^:/@]*@-",
    ),
    Rule(
        "a repository URL must not carry a password (use repo.credentialsSecret)",
        forbid=r"^(https?|ssh)://[^/@]*:[^/@]*@",
    ),
    Rule(
        "the port of a repository URL must be a number from 1 to 65535",
        when=_AUTHORITY_HOST + r":[^/@]*(/|$)",
        require=_AUTHORITY_HOST + ":" + _PORT + r"(/|$)",
    ),
    Rule(
        "a repository URL must be scheme://[user@]host[:port]/path or user@host:path",
        require=rf"^({_SCHEME}({_USER}@)?{_HOST}(:{_PORT})?/{_PATH_CHAR}*|{_USER}@{_HOST}:{_PATH_CHAR}+)$",
    ),
)

# A local path git would not take for a URL, scp-like address or `<transport>::` remote.
_LOCAL_PATH = re.compile(r"^(/|\.{1,2}(/|$))|^[^-:/\x00-\x1f\x7f][^:/\x00-\x1f\x7f]*(/|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def local_path(url: str) -> str | None:
    """The path when ``url`` is a local path or a ``file://`` URL (local mode's sources), else None."""
    if _CONTROL.search(url):
        return None
    if url.startswith("file://"):
        path = url.removeprefix("file://")
        return path if path.startswith("/") else None  # no file://host/…
    if "::" in url.split("/", 1)[0]:
        return None
    return url if _LOCAL_PATH.search(url) else None


def check_repo_url(url: str, *, local: bool) -> str | None:
    """Why git must not be given ``url``; None when it may. ``local``: also local paths and file://."""
    if not url:
        return "a repository URL must not be empty"
    if local and local_path(url) is not None:
        return None
    problem = _first_broken(URL_RULES, url)
    if problem and local_path(url) is not None:
        return (
            "a repository URL must be https://, http://, ssh:// or user@host:path: local paths and file:// "
            "URLs are allowed only in local mode (buildstudio run --local)"
        )
    return problem
