"""Pull/merge requests through a forge's REST API (pure): the request, and the URL in the answer.

- GitHub: ``POST {api}/repos/{owner}/{repo}/pulls`` with ``Authorization: Bearer <token>``,
  ``Accept: application/vnd.github+json``, ``X-GitHub-Api-Version: 2022-11-28``; body ``title``,
  ``head``, ``base``, ``body``; the answer's ``html_url``.
- GitLab: ``POST {api}/api/v4/projects/{url-encoded path}/merge_requests`` with ``PRIVATE-TOKEN``;
  body ``source_branch``, ``target_branch``, ``title``, ``description``; the answer's ``web_url``.
- Gitea / Forgejo: ``POST {api}/api/v1/repos/{owner}/{repo}/pulls`` with ``Authorization: token
  <token>``; body ``head``, ``base``, ``title``, ``body``; the answer's ``html_url``.

``api`` is the API's base (``https://api.github.com``; for GitLab and Gitea the instance's root).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

Forge = Literal["github", "gitlab", "gitea"]
_PROJECT = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+$")


@dataclass(frozen=True)
class ForgeRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]


def project_of(repo_url: str) -> str:
    """``owner/repo`` (or GitLab's ``group/sub/project``) from a clone URL; '' when there is none."""
    # A URL's path, or the path of an scp-like user@host:path.
    path = urlsplit(repo_url).path if "://" in repo_url else repo_url.partition(":")[2]
    path = path.strip("/").removesuffix(".git")
    return path if _PROJECT.match(path) and ".." not in path else ""


def pull_request(
    forge: Forge, api: str, project: str, token: str, *, head: str, base: str, title: str, body: str
) -> ForgeRequest:
    """The documented request that opens a pull (merge) request of ``head`` into ``base``."""
    if not _PROJECT.match(project) or ".." in project:
        raise ValueError(f"{project!r} is not a forge project path")
    root = api.rstrip("/")
    json_headers = {"Content-Type": "application/json", "User-Agent": "buildstudio"}
    if forge == "github":
        owner, _, repo = project.partition("/")
        return ForgeRequest(
            "POST",
            f"{root}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/pulls",
            {
                **json_headers,
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {token}",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            {"title": title, "head": head, "base": base, "body": body},
        )
    if forge == "gitlab":
        return ForgeRequest(
            "POST",
            f"{root}/api/v4/projects/{quote(project, safe='')}/merge_requests",
            {**json_headers, "PRIVATE-TOKEN": token},
            {"source_branch": head, "target_branch": base, "title": title, "description": body},
        )
    owner, _, repo = project.partition("/")
    return ForgeRequest(
        "POST",
        f"{root}/api/v1/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/pulls",
        {**json_headers, "Accept": "application/json", "Authorization": f"token {token}"},
        {"head": head, "base": base, "title": title, "body": body},
    )


def pull_request_url(forge: Forge, answer: Mapping[str, Any]) -> str:
    """The web URL of the created request ('' when the answer has none)."""
    key = "web_url" if forge == "gitlab" else "html_url"
    value = answer.get(key)
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else ""
