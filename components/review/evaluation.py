"""The harness that evaluates the program under the AWS mocks (components.review.mocks)
and waits for every resource and output: what `bin/mzk render`, `diff` and the program tests
look at. A recording monitor keeps what the engine would see besides inputs: `protect`,
which inputs are secret, the URNs and the replace options.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.mocks import MockMonitor

from components.review.mocks import AwsMocks, Registered
from components.review.secret_inputs import _secret_keys

ROOT = Path(__file__).resolve().parents[2]


class RecordingMonitor(MockMonitor):
    """A mock monitor that also keeps each resource's `protect` and secret inputs."""

    def __init__(self, mocks: AwsMocks) -> None:
        super().__init__(mocks)
        self.meta: dict[tuple[str, str], tuple[bool, frozenset[str]]] = {}
        self.components: list[tuple[str, str, str]] = []  # (type, name, parent urn)
        # What the engine would keep secret in state whatever the program passes it.
        self.additional_secret_outputs: dict[tuple[str, str], frozenset[str]] = {}
        self.ignore_changes: dict[tuple[str, str], frozenset[str]] = {}
        # What a review needs besides inputs: the URN (parent chain) and the replace options.
        self.urns: dict[tuple[str, str], str] = {}
        self.replace_on_changes: dict[tuple[str, str], frozenset[str]] = {}
        self.delete_before_replace: dict[tuple[str, str], bool] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        key = (request.type, request.name)
        self.urns[key] = self.make_urn(request.parent, request.type, request.name)
        self.replace_on_changes[key] = frozenset(request.replaceOnChanges)
        self.delete_before_replace[key] = bool(request.deleteBeforeReplace)
        self.meta[(request.type, request.name)] = (request.protect,
                                                   _secret_keys(request.object))
        self.additional_secret_outputs[(request.type, request.name)] = frozenset(
            request.additionalSecretOutputs)
        self.ignore_changes[(request.type, request.name)] = frozenset(request.ignoreChanges)
        if not request.custom:
            self.components.append((request.type, request.name, request.parent))
        return super().RegisterResource(request)


@dataclass
class Evaluation:
    """One evaluated stack: its resolved outputs and every resource AWS would have made."""

    stack: str
    outputs: dict[str, Any]
    secret_outputs: dict[str, bool]
    mocks: AwsMocks
    monitor: RecordingMonitor

    @property
    def resources(self) -> list[Registered]:
        return self.mocks.resources

    def of_type(self, typ: str) -> list[Registered]:
        return self.mocks.of_type(typ)

    def by_id(self, rid: str) -> Registered:
        return self.mocks.by_id[rid]


_PROGRAM: Any = None


def program() -> Any:
    """`__main__.py`, imported under another name so that it declares nothing on import."""
    global _PROGRAM
    if _PROGRAM is None:
        spec = importlib.util.spec_from_file_location("multizone_program", ROOT / "__main__.py")
        assert spec and spec.loader
        _PROGRAM = importlib.util.module_from_spec(spec)
        sys.modules["multizone_program"] = _PROGRAM
        spec.loader.exec_module(_PROGRAM)
    return _PROGRAM


def evaluate(stack: str, config: dict[str, str], mocks: AwsMocks | None = None) -> Evaluation:
    """Run the program for `stack` under mocks and wait for every resource and output."""
    mocks = mocks or AwsMocks(region=config.get("aws:region", "eu-west-1"))
    monitor = RecordingMonitor(mocks)
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="multizone-k8s", stack=stack, preview=False,
                             monitor=monitor)
    pulumi.runtime.set_all_config(config)
    resolved: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    @pulumi.runtime.test
    def run() -> pulumi.Output:
        outputs = program().main()

        async def is_secret(out: Any) -> bool:
            return await pulumi.Output.from_input(out).is_secret()

        for key, value in outputs.items():
            secret[key] = value  # replaced below once resolved
        return pulumi.Output.all(**outputs).apply(lambda v: resolved.update(v))

    run()
    for key, value in list(secret.items()):
        secret[key] = _sync_is_secret(value)
    for reg in mocks.resources:
        reg.protect, reg.secret_inputs = monitor.meta.get((reg.typ, reg.name),
                                                          (False, frozenset()))
    return Evaluation(stack, resolved, secret, mocks, monitor)


def _sync_is_secret(out: Any) -> bool:
    import asyncio

    return asyncio.get_event_loop().run_until_complete(
        pulumi.Output.from_input(out).is_secret())
