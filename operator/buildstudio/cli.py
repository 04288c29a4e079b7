"""Build Studio: run coding tasks with your own local LLM, here (`run --local`) or on a cluster.

  buildstudio run --local --model-server replay:examples/replays/add-subtract.json   # try it, no model needed
  buildstudio run --local --repo . --prompt "Add a subtract function to calc.py"    # a local model service
  buildstudio submit "Fix the flaky test" --repo https://git.example/r.git -w       # a cluster (kubeconfig)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from buildstudio import __version__
from buildstudio.commands.errors import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_USAGE, describe, one_line

# Modules that add their own subcommands through `register(subparsers)`.
SUBCOMMAND_MODULES = (
    "buildstudio.commands.local",  # run --local
    "buildstudio.commands.preflight",  # preflight
    "buildstudio.commands.cluster",  # submit, watch, diff, cancel
    "buildstudio.commands.pipeline_local",  # pipeline --local
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _cmd_crds(args: argparse.Namespace) -> int:
    from buildstudio.api import crdgen

    dirs = [Path(d) for d in args.dir] if args.dir else [REPO_ROOT / "crds", REPO_ROOT / "charts/build-studio/crds"]
    registry_copy = REPO_ROOT / "charts/build-studio/files/build-engines.yaml"
    registry_text = (REPO_ROOT / "engines/build-engines.yaml").read_text(encoding="utf-8")
    if args.check:
        stale = [
            str(d / name)
            for d in dirs
            for name, crd in crdgen.all_crds().items()
            if not (d / name).exists() or (d / name).read_text(encoding="utf-8") != crdgen.render(crd)
        ]
        if not args.dir and registry_copy.read_text(encoding="utf-8") != registry_text:
            stale.append(str(registry_copy))
        if stale:
            print("CRDs drifted from the models; run `buildstudio crds`:\n  " + "\n  ".join(stale), file=sys.stderr)
            return 1
        print("CRDs match the models.")
        return 0
    if args.stdout:
        sys.stdout.write("---\n".join(crdgen.render(c) for c in crdgen.all_crds().values()))
        return 0
    written = crdgen.write(dirs)
    if not args.dir:
        registry_copy.write_text(registry_text, encoding="utf-8")
        written.append(registry_copy)
    for path in written:
        print(f"wrote {path}")
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _cmd_engines(args: argparse.Namespace) -> int:
    from buildstudio.adapters import registry

    try:
        entries = registry.load(Path(args.file) if args.file else None)
    except registry.RegistryError as exc:
        print(f"buildstudio: invalid engine registry: {one_line(str(exc), 1000)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        why = exc.strerror or str(exc)
        print(f"buildstudio: cannot read {args.file}: {why}; check the path (-f FILE)", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(f"{len(entries)} engines valid (the CRD's models and CEL rules)")
        return 0
    if args.output in ("yaml", "json"):
        objs: list[dict[str, Any]] = [registry.as_object(e) for e in entries]
        print(yaml.safe_dump_all(objs, sort_keys=False) if args.output == "yaml" else json.dumps(objs, indent=2))
        return 0
    rows = []
    for e in entries:
        s = e.spec
        rows.append([
            e.name, s.endpoint, s.version, ",".join(s.capabilities) or "-", "yes" if s.bake_in_default else "no",
            ",".join(r.type for r in s.recipes) or "-",
            s.credential.secret_ref.name if s.credential else "-",
            ",".join(f"{m.id}({m.tier})" for m in s.models) or "-",
        ])
    print(_table(rows, ["NAME", "ENDPOINT", "VERSION", "CAPABILITIES", "BAKE-IN", "RECIPES", "CREDENTIAL", "MODELS"]))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from buildstudio.api import crdgen

    crds = {c["spec"]["names"]["singular"]: c for c in crdgen.all_crds().values()}
    crds.update({c["spec"]["names"]["shortNames"][0]: c for c in crdgen.all_crds().values()})
    head, *path = args.field.lower().split(".")
    crd = crds.get(head)
    if crd is None:
        print(f"error: unknown kind {head!r} (builddispatch, buildengine)", file=sys.stderr)
        return 1
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        props = {k.lower(): (k, v) for k, v in (node.get("items", node)).get("properties", {}).items()}
        if part not in props:
            print(f"error: field {part!r} does not exist", file=sys.stderr)
            return 1
        node = props[part][1]
    version = f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    print(f"KIND:     {crd['spec']['names']['kind']}\nVERSION:  {version}")
    print(f"\nFIELD:    {args.field} <{node.get('type', 'object')}>\n\nDESCRIPTION:\n    {node.get('description', '')}")
    fields = node.get("items", node).get("properties", {})
    if fields:
        print("\nFIELDS:")
        required = set(node.get("items", node).get("required", []))
        for name, sub in fields.items():
            print(f"  {name}\t<{sub.get('type', 'object')}>" + ("  -required-" if name in required else ""))
            print(f"    {sub.get('description', '')}\n")
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    import kopf

    from buildstudio.handlers import run_operator

    kopf.configure(verbose=args.verbose)
    run_operator(
        namespaces=args.namespace,
        standalone=args.standalone or args.peering is None,
        liveness=args.liveness,
        peering=args.peering,
        priority=args.priority,
    )
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (its subparsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="buildstudio",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"buildstudio {__version__}")
    # Read by main() from anywhere on the command line; declared here for --help.
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crds", help="generate the CRDs from the API models")
    p.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    p.add_argument("--stdout", action="store_true", help="print instead of writing")
    p.add_argument("--dir", action="append", help="output directory (repeatable; default crds/ and the chart's)")
    p.set_defaults(func=_cmd_crds)

    p = sub.add_parser("engines", help="validate and print the engine registry")
    p.add_argument("-f", "--file", help="registry file (default engines/build-engines.yaml)")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table", help="output format")
    p.add_argument("--check", action="store_true", help="only validate: exit 0 when valid, 2 otherwise")
    p.set_defaults(func=_cmd_engines)

    p = sub.add_parser("explain", help="describe a CRD field, like `kubectl explain`")
    p.add_argument("field", help="KIND.path, e.g. builddispatch.spec.timeouts (bd and be work too)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("operator", help="run the kopf operator")
    p.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    p.add_argument("--standalone", action="store_true", help="no peering (single replica)")
    p.add_argument("--peering", help="kopf peering object name (several replicas, one active)")
    p.add_argument("--priority", type=int, default=0, help="kopf peering priority of this replica")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    p.add_argument("-v", "--verbose", action="store_true", help="kopf's verbose logging")
    p.set_defaults(func=_cmd_operator)

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every error is one line on stderr with a documented exit code; ``--debug`` (anywhere on the
    command line) lets the traceback through instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except Exception as exc:
        if debug:
            raise
        code, line = describe(exc)
    except KeyboardInterrupt:
        if debug:
            raise
        code, line = EXIT_INTERRUPTED, "interrupted"
    print(f"buildstudio: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
