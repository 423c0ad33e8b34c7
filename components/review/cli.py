"""`bin/mzk render|diff|envs`: review a stack without credentials; manage test stacks.

    render STACK [--format text|json]      the stack's resources and inputs, as text
    diff STACK --base REF                  REF's stack against the working tree's
    envs new PR [--ttl-days N]             write stacks/Pulumi.pr-N.yaml from `test`
         [--operator-key FILE] [--runner-address IP]   (CI: its key and address)
    envs up PR                             preview, save the plan, apply exactly that plan
    envs destroy PR [--yes-destroy pr-N]   destroy + stack rm (confirm: type the name)
    envs revoke PR --runner-address IP     remove the rules admitting that address
    envs list | envs sweep                 test stacks and their expiry; destroy expired

PR is a pull request's number (42) or stack (pr-42); envs touches no other stack. Every
envs action takes --dry-run: nothing changes, what would happen is printed.
Bad input (an unknown stack, a bad ref, a stack file that does not parse, no Pulumi CLI)
is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bootstrap.errors import ConfigError
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
    from components.review.secret_inputs import digest_key

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


# The flags that only some actions take: given to another, they are refused, not ignored.
_ENVS_FLAGS = {"--yes-destroy": ("destroy",), "--operator-key": ("new",),
               "--runner-address": ("new", "revoke"), "--ttl-days": ("new",)}
_DEFAULTS: dict[str, object] = {"--ttl-days": 3}


def _confirmed(stack: str, given: str | None) -> None:
    """Destroying needs the stack's name typed at a terminal, or `--yes-destroy STACK`
    naming it exactly; without either (a script, a pipe) nothing is destroyed."""
    if given is not None:
        if given != stack:
            raise ReviewError(f"envs destroy {stack}: --yes-destroy {given!r} does not name "
                              f"this stack; pass --yes-destroy {stack}")
        return
    if not sys.stdin.isatty():
        raise ReviewError(f"envs destroy {stack}: not confirmed; type the name at a terminal "
                          f"or pass --yes-destroy {stack}")
    typed = input(f"Destroy every resource of {stack} and remove the stack? "
                  f"Type {stack} to confirm: ").strip()
    if typed != stack:
        raise ReviewError(f"envs destroy {stack}: {typed!r} is not {stack}; nothing destroyed")


def envs(args: argparse.Namespace) -> int:
    from components.review import automation, prstack
    from components.review import envs as decide

    now = dt.datetime.now(dt.UTC)
    root = Path(args.root)
    for flag, actions in _ENVS_FLAGS.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")) not in (None, _DEFAULTS.get(flag)) \
                and args.action not in actions:
            raise ReviewError(f"envs {args.action}: {flag} is for envs {' and '.join(actions)} "
                              "only; leave it out")
    if args.action in ("list", "sweep"):
        if args.target is not None:
            raise ReviewError(f"envs {args.action} takes no stack (got {args.target!r}); "
                              "it reads every stack of the backend")
        return _sweep(args, now)
    stack = decide.stack_of(args.target)
    if args.action == "new":
        key = Path(args.operator_key) if args.operator_key else None
        path, text = prstack.render(root, stack, now, args.ttl_days, key, args.runner_address)
        expires = prstack.values(root, stack, now, args.ttl_days)["multizone:expiresAt"]
        if args.dry_run:
            print(f"{path.relative_to(root)}: would be written (--dry-run):")
            sys.stdout.write(text)
            return 0
        prstack.write(root, stack, now, args.ttl_days, key, args.runner_address)
        print(f"{path.relative_to(root)}: stack {stack}, expires {expires}")
        return 0
    if args.action == "up":
        automation.up(stack, args.dry_run)
        return 0
    if args.action == "revoke":
        if not args.runner_address:
            raise ReviewError(f"envs revoke {stack}: name the address, --runner-address IP")
        automation.revoke(stack, prstack.runner_cidr(args.runner_address), args.dry_run)
        return 0
    if not args.dry_run:
        _confirmed(stack, args.yes_destroy)
    automation.destroy(stack, args.dry_run)
    if not args.dry_run:
        print(f"{stack}: destroyed and removed")
    return 0


def _sweep(args: argparse.Namespace, now: dt.datetime) -> int:
    from components.review import automation
    from components.review import envs as decide

    verdicts = decide.sweep(automation.stacks(), now)
    for v in verdicts:
        print(f"{v.stack}: {'destroy' if v.destroy else 'keep'}: {v.reason}")
    if args.action == "list":
        return 0
    doomed = [v.stack for v in verdicts if v.destroy]
    if not doomed:
        print("sweep: nothing has expired")
    for name in doomed:
        stack = decide.pr_stack(name)
        if stack is None:  # decide() destroys pr-<n> stacks only; never reached
            raise ReviewError(f"sweep: {name!r} is not a pr-<number> stack; refused")
        if args.dry_run:
            print(f"{stack}: would be destroyed and removed (--dry-run)")
        else:
            automation.destroy(stack, dry_run=False)
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
    e = sub.add_parser("envs", help="pull requests' test stacks: new, up, destroy, revoke, "
                                    "list, sweep")
    e.add_argument("action", choices=("new", "up", "destroy", "revoke", "list", "sweep"))
    e.add_argument("target", nargs="?", help="the pull request: its number (42) or its stack "
                                             "(pr-42); nothing else is accepted")
    e.add_argument("--ttl-days", type=int, default=3)
    e.add_argument("--dry-run", action="store_true",
                   help="change nothing; print what would happen")
    e.add_argument("--yes-destroy", metavar="STACK",
                   help="destroy: confirm without a terminal; must name the stack")
    e.add_argument("--operator-key", metavar="FILE",
                   help="new: the run's SSH private key becomes the stack's operator key")
    e.add_argument("--runner-address", metavar="IP",
                   help="new: admit this one address (/32) too; revoke: remove its rules")
    e.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    e.set_defaults(run=envs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as err:  # ours (ReviewError) and a stack file's (StackFileError)
        print(f"mzk {args.command}: {err}", file=sys.stderr)
        return 2
