"""`buildstudio preflight`: probe one endpoint for one model, print observation + verdict."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from buildstudio.adapters.modelservice.probe import probe
from buildstudio.adapters.modelservice.smoke import SmokeResult, tool_call_smoke
from buildstudio.core.observation import Backend, Observation, ProbeTarget
from buildstudio.core.preflight import DEFAULT_FLOOR, DEFAULT_HARD_MINIMUM, Verdict, decide

EXIT_ADMITTED = 0
EXIT_REFUSED = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `preflight` subcommand; it sets `func`, which returns the process exit code."""
    parser = subparsers.add_parser(
        "preflight",
        help="check a model service: reachable, model listed, context window above the floor",
        description="Probe an OpenAI-compatible model service the way the operator does before a dispatch. "
        "Exit code 0 when a dispatch would be admitted, 1 when refused.",
    )
    parser.add_argument("--base-url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:11434/v1")
    parser.add_argument("--model", required=True, help="model id as opencode will send it")
    parser.add_argument("--backend", choices=[b.value for b in Backend], default=Backend.AUTO.value)
    parser.add_argument("--floor", type=int, default=DEFAULT_FLOOR, help="advisory context floor (tokens)")
    parser.add_argument(
        "--hard-minimum", type=int, default=DEFAULT_HARD_MINIMUM, help="refuse below this context (tokens)"
    )
    parser.add_argument(
        "--context", type=int, dest="context_override", help="declared context, used when the server reports none"
    )
    parser.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    parser.add_argument("--connect-timeout", type=float, default=ProbeTarget.connect_timeout)
    parser.add_argument("--read-timeout", type=float, default=ProbeTarget.read_timeout)
    parser.add_argument(
        "--total-timeout", type=float, default=ProbeTarget.total_timeout, help="bound on the whole probe (s)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="also send one chat request with one tool (warns, never refuses)"
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(func=run)


def target_from_args(args: argparse.Namespace) -> ProbeTarget:
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    return ProbeTarget(
        base_url=args.base_url,
        backend=Backend(args.backend),
        api_key=api_key or None,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        total_timeout=args.total_timeout,
    )


def render_table(obs: Observation, verdict: Verdict, smoke: SmokeResult | None = None) -> str:
    """Human view: one `FIELD  value` row per fact, observed numbers first, then the verdict."""
    rows: list[tuple[str, str]] = [("ENDPOINT", obs.base_url)]
    if obs.failure is not None:
        status = f", HTTP {obs.http_status}" if obs.http_status else ""
        rows.append(("REACHABLE", f"{'yes' if obs.reachable else 'no'} ({obs.failure}{status}): {obs.detail}"))
    else:
        rows += [
            ("REACHABLE", f"yes, HTTP {obs.http_status} in {obs.latency_ms} ms (probe {obs.duration_ms} ms)"),
            ("BACKEND", f"{obs.backend} ({obs.backend_evidence})"),
            ("MODELS", f"{obs.models_total} listed: {', '.join(obs.models[:5])}{' …' if obs.models_total > 5 else ''}"),
        ]
        found = (
            f"found as {obs.matched_id} ({obs.match_rule})" if obs.model_present else f"NOT FOUND ({obs.match_rule})"
        )
        rows.append(("MODEL", f"{obs.model}: {found}"))
        ctx = obs.context
        if obs.model_present:
            rows.append(("CONTEXT", f"{ctx.allocated} ({ctx.allocated_source})" if ctx.allocated else "not reported"))
            if ctx.trained:
                rows.append(("TRAINED MAX", f"{ctx.trained} ({ctx.trained_source}); not what the server allocated"))
            if ctx.assumed_default and not ctx.allocated:
                rows.append(("ENGINE DEFAULT", f"{ctx.assumed_default} (applies unless configured)"))
        rows += [(f"NOTE {i + 1}", note) for i, note in enumerate(obs.notes)]
    rows += [
        ("MODEL READY", f"{verdict.status} ({verdict.reason})"),
        ("MESSAGE", verdict.message),
    ]
    if verdict.advice:
        rows.append(("ADVICE", verdict.advice))
    if verdict.context_for_config:
        rows.append(("OPENCODE", f"limit.context = {verdict.context_for_config}"))
    if smoke is not None:
        rows.append(("TOOL SMOKE", f"{smoke.status} ({smoke.tool_calls} tool call(s), {smoke.latency_ms} ms)"))
        rows += [("SMOKE ADVICE", smoke.advice)] if smoke.advice else []
    rows.append(("ADMIT", ("yes, with a warning" if verdict.warning else "yes") if verdict.admit else "no"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def render_json(obs: Observation, verdict: Verdict, smoke: SmokeResult | None = None) -> str:
    document = {"observation": obs.to_status(), "verdict": verdict.model_dump(mode="json", by_alias=True)}
    if smoke is not None:
        document["toolSmoke"] = smoke.model_dump(mode="json", by_alias=True)
    return json.dumps(document, indent=2)


async def run_async(args: argparse.Namespace) -> int:
    target = target_from_args(args)
    obs = await probe(target, args.model)
    verdict = decide(obs, floor=args.floor, hard_minimum=args.hard_minimum, context_override=args.context_override)
    smoke = await tool_call_smoke(target, obs.matched_id or args.model) if args.smoke and verdict.admit else None
    print(render_json(obs, verdict, smoke) if args.output == "json" else render_table(obs, verdict, smoke))
    return EXIT_ADMITTED if verdict.admit else EXIT_REFUSED


def run(args: argparse.Namespace) -> int:
    return asyncio.run(run_async(args))
