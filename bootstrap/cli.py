"""The command line: `python -m bootstrap <command> ...`.

Each command lives in its own module and exposes `add_arguments(parser)` and `run(args)`;
this module only dispatches and turns our errors into one line and an exit code
(2 for bad input, 1 for everything else), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bootstrap.errors import ConfigError, MultizoneError

# command name -> (module, one-line help)
COMMANDS = {
    "pki": ("bootstrap.pki.command", "issue or refresh the cluster PKI into a directory"),
    "lab": ("bootstrap.lab.command", "the local three-zone lab: up, down, status"),
    "apply": ("bootstrap.apply_command", "bootstrap every host of an inventory over SSH"),
    "plan": ("bootstrap.apply_command", "show per host what apply would change"),
    "check": ("bootstrap.apply_command", "health of every host and etcd member"),
    "pki-bundle": ("bootstrap.pki.bundle", "export a PKI directory to one file, or import one "
                                           "(pulumi up keeps the PKI in stack state)"),
    "rotate-ca": ("bootstrap.rotate_command", "replace CAs on purpose, the cluster working "
                                              "throughout"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}; see --help\n")


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported: start-up stays fast, and one
    command's dependencies (paramiko, say) are not loaded for another."""
    parser = _Parser(prog="python -m bootstrap",
                     description="Bootstrap a multi-zone Kubernetes control plane over SSH.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser, name)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MultizoneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
