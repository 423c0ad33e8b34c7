"""Test doubles for bootstrap.runner.Runner: an in-memory host for step tests.

Under tests/ because production code never answers commands from memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bootstrap.runner import Result, command_failed


@dataclass
class FakeFile:
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


Responder = Callable[[str, bytes | None], Result]


@dataclass
class FakeRunner:
    """A `Runner` with an in-memory file system and scripted command answers.

    `on(pattern, ...)` registers an answer for commands containing `pattern` (latest
    registration wins). Unanswered commands succeed with no output, or raise
    AssertionError with `strict=True`. Every command is recorded in `commands`, every
    write in `writes`.
    """

    name: str = "fake"
    files: dict[str, FakeFile] = field(default_factory=dict)
    strict: bool = False
    commands: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    _answers: list[tuple[str, Responder]] = field(default_factory=list)

    def on(self, pattern: str, stdout: str = "", exit_code: int = 0, stderr: str = "",
           handler: Responder | None = None) -> FakeRunner:
        fixed = Result(exit_code, stdout, stderr)
        self._answers.append((pattern, handler or (lambda _c, _s: fixed)))
        return self

    def run(self, command: str, *, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> Result:
        self.commands.append(command)
        for pattern, responder in reversed(self._answers):
            if pattern in command:
                result = responder(command, stdin)
                break
        else:
            if self.strict:
                raise AssertionError(f"{self.name}: unexpected command: {command}")
            result = Result(0, "", "")
        if check and result.exit_code != 0:
            raise command_failed(self.name, command, result)
        return result

    def read(self, path: str) -> bytes | None:
        f = self.files.get(path)
        return None if f is None else f.content

    def put(self, path: str, content: bytes, mode: int, owner: str = "root",
            group: str = "root") -> bool:
        new = FakeFile(bytes(content), mode, owner, group)
        if self.files.get(path) == new:
            return False
        self.files[path] = new
        self.writes.append(path)
        return True

    def remove(self, path: str) -> bool:
        return self.files.pop(path, None) is not None
