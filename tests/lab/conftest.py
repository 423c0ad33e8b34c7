"""A real lab for the whole session: brought up once in a temp dir, always brought down."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootstrap.inventory import Inventory, load
from bootstrap.lab import build
from bootstrap.lab.layout import Layout


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    for tool in ("ip", "unshare", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can see whether it failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@dataclass
class Lab:
    dir: Path
    layout: Layout
    inventory: Inventory


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    lab_dir = tmp_path_factory.mktemp("lab") / "lab"
    try:
        layout = build.up(lab_dir, workers=2, say=lambda _m: None)
        yield Lab(lab_dir, layout, load(lab_dir / "inventory.yaml"))
    finally:
        build.down(lab_dir, say=lambda _m: None)
