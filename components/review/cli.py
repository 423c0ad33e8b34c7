"""`bin/mzk render|diff|envs`: review a stack without credentials; manage test stacks.

    render STACK [--format text|json]      the stack's resources and inputs, as text
    diff STACK --base REF                  REF's stack against the working tree's
    envs new NUMBER [--ttl-days N]         write stacks/Pulumi.pr-NUMBER.yaml from `test`
    envs up STACK | envs destroy STACK     pulumi up / destroy + stack rm (Pulumi CLI)
    envs list | envs sweep [--dry-run]     test stacks and their expiry; destroy expired

Bad input (an unknown stack, a bad ref, no Pulumi CLI) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from components.review.errors import ReviewError

ROOT = Path(__file__).resolve().parents[2]


def _check_stack(root: Path, stack: str) -> None:
    from components.review.render import known_stacks, stack_file

    if not stack_file(root, stack).is_file():
        raise ReviewError(f"stack {stack!r}: no {stack_file(root, stack).relative_to(root)}; "
                          f"use one of: {', '.join(known_stacks(root))}")


def _render_doc(root: Path, stack: str) -> dict:
    import pulumi

    from components.review.render import document, evaluate_stack
    from components.settings import SettingsError

    _check_stack(root, stack)
    try:
        return document(evaluate_stack(root, stack))
    except (pulumi.RunError, SettingsError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ReviewError(f"stacks/Pulumi.{stack}.yaml: {first}; run bin/mzk check-stack "
                          "for every problem") from err


def render(args: argparse.Namespace) -> int:
    import json

    from components.review.render import text

    doc = _render_doc(Path(args.root), args.stack)
    sys.stdout.write(json.dumps(doc, sort_keys=True) if args.format == "json" else text(doc))
    return 0


def diff(args: argparse.Namespace) -> int:
    from components.review import diff as differ
    from components.review.gitref import BaseRender

    root = Path(args.root)
    _check_stack(root, args.stack)
    from components.review.mocks import digest_key

    key = os.environ.get("MZK_SECRET_DIGEST_KEY") or os.urandom(16).hex()
    base = BaseRender(root, args.base, args.stack, key)  # renders in parallel with head
    try:
        with digest_key(key):
            head = _render_doc(root, args.stack)
    except BaseException:
        base.close()
        raise
    result = differ.compare(base.result(), head)
    label = args.base + ("" if base.commit.startswith(args.base) else f" ({base.commit[:12]})")
    sys.stdout.write(differ.text(result, args.stack, label, "working tree"))
    return 0


def envs(args: argparse.Namespace) -> int:
    from components.review import automation, prstack
    from components.review import envs as decide

    now = dt.datetime.now(dt.UTC)
    if args.action == "new":
        path = prstack.write(Path(args.root), args.target, now, args.ttl_days)
        print(f"{path.relative_to(Path(args.root))}: stack {prstack.stack_name(args.target)}, "
              f"expires {path.read_text().split('expiresAt: ')[1].split()[0].strip(chr(39))}")
        return 0
    if args.action in ("up", "destroy"):
        if not args.target:
            raise ReviewError(f"envs {args.action}: name the stack, e.g. pr-42")
        if args.action == "destroy" and args.target.rsplit("/", 1)[-1] == decide.PROD:
            raise ReviewError("envs destroy prod: refused; prod is destroyed by hand only "
                              "(docs/pulumi.md)")
        getattr(automation, args.action)(args.target)
        return 0
    verdicts = decide.sweep(automation.stacks(), now)
    for v in verdicts:
        if args.action == "list" or v.destroy:
            mark = "destroy" if v.destroy else "keep"
            print(f"{v.stack}: {mark}: {v.reason}")
    if args.action == "sweep":
        doomed = [v.stack for v in verdicts if v.destroy]
        if not doomed:
            print("sweep: nothing has expired")
        for stack in doomed:
            if args.dry_run:
                print(f"{stack}: would be destroyed and removed (--dry-run)")
            else:
                automation.destroy(stack)
                print(f"{stack}: destroyed and removed")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bin/mzk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="a stack's resources and inputs as text")
    r.add_argument("stack")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    r.set_defaults(run=render)
    d = sub.add_parser("diff", help="a stack at a git ref against the working tree")
    d.add_argument("stack")
    d.add_argument("--base", required=True, help="git ref: branch, tag or commit")
    d.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    d.set_defaults(run=diff)
    e = sub.add_parser("envs", help="test stacks: new, up, destroy, list, sweep")
    e.add_argument("action", choices=("new", "up", "destroy", "list", "sweep"))
    e.add_argument("target", nargs="?", help="new: a pull request number; up/destroy: a stack")
    e.add_argument("--ttl-days", type=int, default=3)
    e.add_argument("--dry-run", action="store_true")
    e.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    e.set_defaults(run=envs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "envs" and args.action == "new":
        try:
            args.target = int(args.target or "")
        except ValueError:
            print(f"mzk envs new: {args.target!r} is not a pull request number; give e.g. 42",
                  file=sys.stderr)
            return 2
    try:
        return int(args.run(args))
    except ReviewError as err:
        print(f"mzk {args.command}: {err}", file=sys.stderr)
        return 2
