"""A stack rendered as of a git ref, with today's render code.

The ref's tree is unpacked into a temporary directory (`git archive REF | tar -x`: no
worktree, no checkout, nothing in the repository changes), this checkout's
`components/review/` is copied over it so both sides are rendered the same way, and the
render runs there in a child process, because a process can import only one `components`
package and the ref's program needs its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from components.review.errors import ReviewError

REVIEW = Path(__file__).resolve().parent


def commit_of(root: Path, ref: str) -> str:
    """The commit `ref` names, or a one-line error naming the ref and the fix."""
    if ref.startswith("-"):
        raise ReviewError(f"--base {ref}: not a git ref; give a branch, tag or commit, e.g. "
                          "origin/main or HEAD~1")
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                           cwd=root, capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise ReviewError(f"--base {ref}: no such commit in {root}; give a branch, tag or "
                          "commit (fetch it first if it is remote, e.g. git fetch origin main)")
    return found.stdout.strip()


def unpack(root: Path, commit: str, into: Path) -> None:
    archive = subprocess.Popen(["git", "archive", commit], cwd=root, stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout,
                         capture_output=True, check=False)
    if archive.stdout:
        archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise ReviewError(f"git archive {commit[:12]}: could not unpack the tree "
                          f"({tar.stderr.decode(errors='replace').strip()[:200]})")
    target = into / "components" / "review"
    if (into / "components").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(REVIEW, target, ignore=shutil.ignore_patterns("__pycache__"))


class BaseRender:
    """Renders `stack` at `ref` in a child process; `result()` waits for its document."""

    def __init__(self, root: Path, ref: str, stack: str, digest_key: str) -> None:
        self.ref, self.stack = ref, stack
        self.commit = commit_of(root, ref)
        self.dir = Path(tempfile.mkdtemp(prefix="mzk-base-"))
        self.proc: subprocess.Popen[str] | None = None
        try:
            unpack(root, self.commit, self.dir)
        except BaseException:
            self.close()
            raise
        self.absent = not (self.dir / "stacks" / f"Pulumi.{stack}.yaml").is_file() \
            or not (self.dir / "components").is_dir()
        if not self.absent:
            env = {**os.environ, "PYTHONPATH": str(self.dir), "MZK_SECRET_DIGEST_KEY": digest_key}
            self.proc = subprocess.Popen(  # noqa: S603 (our interpreter, our module)
                [sys.executable, "-m", "components.review", "render", stack, "--format",
                 "json", "--root", str(self.dir)],
                cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict[str, Any]:
        try:
            if self.proc is None:  # the stack did not exist then: everything is new
                return {"stack": self.stack, "resources": {}, "outputs": {}}
            out, err = self.proc.communicate()
            if self.proc.returncode != 0:
                last = (err.strip().splitlines() or ["no message"])[-1]
                raise ReviewError(f"--base {self.ref}: the stack {self.stack} does not render "
                                  f"there: {last}")
            return dict(json.loads(out))
        finally:
            self.close()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
