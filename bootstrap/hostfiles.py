"""Many files on one host in two round trips: one to learn what is there, one to write
what differs.

A control-plane host receives some 25 PKI files; one SSH command per file would make a
no-op re-run cost dozens of round trips per host. Here the state of every path comes back
from one `sh -s` script (sha256, mode, owner, group), and every differing file goes out in
one more: each file is written to a temp file beside its target, checked against its
sha256, fsynced, and only then renamed over the target. A connection cut at any point
leaves each target either old or new, never partial; the temp files are removed by the
script's exit trap (or, if the shell itself is killed, are named `.<file>.mzk-*` and
replaced on the next run).

A runner may implement `stat_many` / `put_many` itself (the in-memory fakes of the unit
tests do); otherwise the scripts run through `runner.run`.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bootstrap.runner import Runner, parent_dirs

_MARK = "MZK_END_OF_FILE"


@dataclass(frozen=True)
class FileSpec:
    """A file a host must hold."""

    path: str
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"

    def state(self) -> str:
        return (f"{hashlib.sha256(self.content).hexdigest()} {self.mode:o} "
                f"{self.owner} {self.group}")


def state_script(paths: Sequence[str]) -> str:
    """Shell printing the state of every path: two processes on the host whatever the
    number of paths (one sha256sum, one stat). `parse_states` reads its output."""
    q = " ".join(shlex.quote(p) for p in paths)
    return (f"sha256sum -- {q} 2>/dev/null\necho {_MARK}\n"
            f"stat -c '%a %U %G %F|%n' -- {q} 2>/dev/null\ntrue\n")


def parse_states(paths: Sequence[str], output: str) -> dict[str, str | None]:
    """path -> "sha256 mode owner group" (mode in octal), None where no regular file."""
    sums, _, stats = output.partition(f"{_MARK}\n")
    digests = {}
    for line in sums.splitlines():
        digest, _, path = line.partition("  ")
        digests[path] = digest
    states: dict[str, str | None] = dict.fromkeys(paths)
    for line in stats.splitlines():
        head, _, path = line.partition("|")
        mode, owner, group, kind = head.split(" ", 3)
        if kind in ("regular file", "regular empty file") and path in digests:
            states[path] = f"{digests[path]} {int(mode, 8):o} {owner} {group}"
    return states


def stat_many(runner: Runner, paths: Sequence[str]) -> dict[str, str | None]:
    """The state of every path in one round trip (see `state_script`)."""
    native = getattr(runner, "stat_many", None)
    if native is not None:
        result: dict[str, str | None] = native(paths)
        return result
    if not paths:
        return {}
    out = runner.run("sh -s", stdin=state_script(paths).encode()).stdout
    return parse_states(paths, out)


def differing(runner: Runner, files: Iterable[FileSpec]) -> list[FileSpec]:
    """The files whose content, mode or owner on the host differ from the spec."""
    files = list(files)
    states = stat_many(runner, [f.path for f in files])
    return [f for f in files if states[f.path] != f.state()]


def put_many(runner: Runner, files: Sequence[FileSpec]) -> None:
    """Write every file atomically (see the module docstring). Writes all, no comparison."""
    native = getattr(runner, "put_many", None)
    if native is not None:
        native(files)
        return
    if not files:
        return
    q = shlex.quote
    script = ["set -e", "umask 077", "tmps=''", "trap 'rm -f $tmps' EXIT",
              "trap 'exit 91' HUP INT PIPE TERM"]
    made: set[str] = set()
    renames = []
    for i, f in enumerate(files):
        for directory, mode in parent_dirs(f.path):
            if directory not in made:
                script.append(f"[ -d {q(directory)} ] || mkdir -m {mode:o} -- {q(directory)} "
                              f"2>/dev/null || [ -d {q(directory)} ]")  # racing a peer is fine
                made.add(directory)
        directory = posixpath.dirname(f.path)
        name = posixpath.basename(f.path)
        var = f"t{i}"
        digest = hashlib.sha256(f.content).hexdigest()
        script += [
            f"{var}=$(mktemp {q(posixpath.join(directory, '.' + name))}.mzk-XXXXXX)",
            f'tmps="$tmps ${var}"',
            f"base64 -d > \"${var}\" <<'{_MARK}'",
            base64.encodebytes(f.content).decode("ascii").rstrip("\n"),
            _MARK,
            f'[ "$(sha256sum < "${var}" | cut -d" " -f1)" = {digest} ] '
            f'|| {{ echo "{f.path}: content arrived incomplete" >&2; exit 90; }}',
            f'chown {q(f.owner)}:{q(f.group)} "${var}"',
            f'chmod {f.mode:o} "${var}"',
        ]
        renames.append((var, f.path))
    # Everything arrived whole: make it durable, then swap each file in with one rename.
    script.append("sync -- " + " ".join(f'"${var}"' for var, _ in renames))
    script += [f'mv -f -- "${var}" {q(path)}' for var, path in renames]
    script.append("tmps=''")
    dirs = sorted({posixpath.dirname(path) for _, path in renames})
    script.append("sync -- " + " ".join(q(d) for d in dirs) + " || true")
    runner.run("sh -s", stdin=("\n".join(script) + "\n").encode())


def sync(runner: Runner, files: Sequence[FileSpec], dry_run: bool = False,
         absent: Sequence[str] = (),
         known: Mapping[str, str | None] | None = None) -> tuple[list[str], list[str]]:
    """Bring the files to spec and remove the `absent` paths that exist, learning the state
    of both in one round trip, or none when `known` (gathered with the facts) covers every
    path. Returns (written, removed) paths; with dry_run, what would be."""
    paths = [f.path for f in files] + list(absent)
    if known is not None and all(p in known for p in paths):
        states = dict(known)
    else:
        states = stat_many(runner, paths)
    todo = [f for f in files if states[f.path] != f.state()]
    present = [p for p in absent if states[p] is not None]
    if not dry_run:
        if todo:
            put_many(runner, todo)
        if present:
            runner.run("rm -f -- " + " ".join(shlex.quote(p) for p in present))
    return [f.path for f in todo], present
