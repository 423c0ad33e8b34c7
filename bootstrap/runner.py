"""What a step may do on one host (`Runner`), and the shell every runner uses for files.

Steps never talk to paramiko: they get a `Runner` (run a command, read a file, place a file
atomically, remove a file). `bootstrap.ssh_runner.SSHRunner` is the real one; the tests
have an in-memory one. Kept apart from SSH so that code which only needs the contract (the
steps, the service managers, the batched file calls) does not depend on the connection.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass
from typing import Protocol

from bootstrap.errors import StepError


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Runner(Protocol):
    """What a step may do on one host. Every effect is idempotent or reports a change."""

    name: str

    def run(self, command: str, *, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> Result: ...

    def read(self, path: str) -> bytes | None: ...

    def put(self, path: str, content: bytes, mode: int, owner: str = "root",
            group: str = "root") -> bool: ...

    def remove(self, path: str) -> bool: ...


def _tail(text: str, lines: int = 5) -> str:
    rest = text.strip().splitlines()[-lines:]
    return " | ".join(rest) if rest else "(no output)"


def command_failed(host: str, command: str, result: Result) -> StepError:
    short = command if len(command) <= 120 else command[:117] + "..."
    return StepError(f"{host}: command failed with exit code {result.exit_code}: {short}: "
                     f"{_tail(result.stderr or result.stdout)}")


def parent_dirs(path: str) -> list[tuple[str, int]]:
    """Every ancestor of `path` below `/`, outermost first, with the mode to create it with
    (0700 for a directory named pki, which holds private keys, else 0755)."""
    out: list[tuple[str, int]] = []
    current = posixpath.dirname(posixpath.normpath(path))
    while current not in ("/", ""):
        out.append((current, 0o700 if posixpath.basename(current) == "pki" else 0o755))
        current = posixpath.dirname(current)
    return out[::-1]


def put_script(path: str, content: bytes, mode: int, owner: str, group: str) -> str:
    """Shell that writes stdin to `path` atomically and only if it arrived whole.

    The temp file lives beside the target so the rename is atomic; the content's sha256 is
    checked before the rename, so a transfer cut short (connection lost, sshd killed)
    leaves the old file, never a partial one, and the trap removes the temp file.
    """
    q = shlex.quote
    digest = hashlib.sha256(content).hexdigest()
    directory = posixpath.dirname(path) or "/"
    lines = ["set -e", "umask 077"]
    # A concurrent put may create the same parent first: that is fine.
    lines += [f"[ -d {q(d)} ] || mkdir -m {m:o} -- {q(d)} 2>/dev/null || [ -d {q(d)} ]"
              for d, m in parent_dirs(path)]
    lines += [
        f"tmp=$(mktemp {q(posixpath.join(directory, '.' + posixpath.basename(path)))}"
        ".mzk-XXXXXX)",
        "trap 'rm -f \"$tmp\"' EXIT",
        "trap 'exit 91' HUP INT PIPE TERM",
        'cat > "$tmp"',
        f'if [ "$(sha256sum < "$tmp" | cut -d" " -f1)" != {digest} ]; then',
        '  rm -f "$tmp"; echo "content arrived incomplete" >&2; exit 90',
        "fi",
        f'chown {q(owner)}:{q(group)} "$tmp"',
        f'chmod {mode:o} "$tmp"',
        'sync -- "$tmp"',
        f'mv -f -- "$tmp" {q(path)}',
        f"sync -- {q(directory)} || true",
    ]
    return "\n".join(lines)


def stat_script(path: str) -> str:
    """Prints `sha256 mode owner group` of a regular file, nothing if absent."""
    q = shlex.quote(path)
    return (f"if [ -f {q} ]; then printf '%s ' \"$(sha256sum < {q} | cut -d' ' -f1)\"; "
            f"stat -c '%a %U %G' -- {q}; fi")


def same_file(stat_line: str, content: bytes, mode: int, owner: str, group: str) -> bool:
    """Whether the output of `stat_script` describes exactly this content, mode and owner."""
    parts = stat_line.split()
    if len(parts) != 4:
        return False
    digest, got_mode, got_owner, got_group = parts
    return (digest == hashlib.sha256(content).hexdigest() and int(got_mode, 8) == mode
            and got_owner == owner and got_group == group)
