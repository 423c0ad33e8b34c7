"""A control-plane host replaced under its name (a new AMI, one zone per `pulumi up`): the
new instance has a new address and the old etcd volume, so its member keeps its data and ID
while the cluster still lists its old peer URL. `etcd.converge` must update that URL (the
other members could not reach it otherwise, and the next zone's replacement would cost the
quorum), and wait for the member to be healthy. The etcd commands are recorded, not run."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bootstrap.engine import HostContext
from bootstrap.steps import etcd
from tests.unit.fakes import FakeRunner
from tests.unit.pki_support import example_data, load

NEW_ADDRESS = "10.0.16.37"


def contexts(raw: dict[str, Any], dry_run: bool) -> list[HostContext]:
    inventory = load(raw)
    return [HostContext(host=h, runner=FakeRunner(h.name), inventory=inventory,
                        dry_run=dry_run, shared={}) for h in inventory.etcd_members]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every member runs with data and its current unit; the cluster lists cp-a at its old
    address 10.0.16.10. Returns the (host, etcdctl arguments) run, and 'healthy <host>'."""
    calls: list[tuple[str, str]] = []
    old = {"cp-a": "10.0.16.10", "cp-b": "10.0.32.10", "cp-c": "10.0.48.10"}
    listed = [etcd.Member(id_hex=f"{i + 1:x}", name=name,
                          peer_urls=(f"https://{address}:{etcd.MAIN.peer_port}",))
              for i, (name, address) in enumerate(old.items())]

    def etcdctl(ctx: HostContext, _cluster: Any, args: str, **_kw: Any) -> Any:
        calls.append((ctx.name, args))
        return type("Out", (), {"ok": True, "stdout": ""})()

    monkeypatch.setattr(etcd, "probe", lambda _ctx, _c: etcd.Probe(has_data=True, unit=b"u"))
    monkeypatch.setattr(etcd, "member_running", lambda _ctx, _c: True)
    monkeypatch.setattr(etcd, "_current", lambda *_a: True)
    monkeypatch.setattr(etcd, "_listed_by_facts", lambda _g, _c: None)
    monkeypatch.setattr(etcd, "_anchor", lambda group, _c: (group[1], list(listed)))
    monkeypatch.setattr(etcd, "etcdctl", etcdctl)
    monkeypatch.setattr(etcd, "members", lambda _ctx, _c: list(listed))
    monkeypatch.setattr(etcd, "wait_healthy",
                        lambda ctx, _c, *_a, **_k: calls.append((ctx.name, "healthy")))
    monkeypatch.setattr(etcd, "_ensure", lambda *_a, **_k: None)
    return calls


def replaced() -> dict[str, Any]:
    raw = copy.deepcopy(example_data("ecdsa"))
    raw["hosts"][0]["address"] = NEW_ADDRESS  # cp-a, a new instance
    return raw


def test_a_replaced_member_gets_its_new_peer_url(recorded: list[tuple[str, str]]) -> None:
    group = contexts(replaced(), dry_run=False)
    etcd.converge(etcd.MAIN, group)
    new_peer = f"https://{NEW_ADDRESS}:{etcd.MAIN.peer_port}"
    assert recorded == [("cp-b", f"member update 1 --peer-urls={new_peer}"),
                        ("cp-a", "healthy")]
    assert any("update member cp-a (1) of etcd: peer URL " + new_peer in change
               for change in group[1].changes)
    assert not any("remove" in args or "add" in args for _, args in recorded)  # kept its ID


def test_the_plan_names_the_update_and_runs_nothing(recorded: list[tuple[str, str]]) -> None:
    group = contexts(replaced(), dry_run=True)
    etcd.converge(etcd.MAIN, group)
    assert [args for _, args in recorded] == ["endpoint health"]  # a read: is it up?
    assert any(change.startswith("update member cp-a") for change in group[1].changes)


def test_members_at_their_addresses_are_left_alone(recorded: list[tuple[str, str]]) -> None:
    group = contexts(example_data("ecdsa"), dry_run=False)
    etcd.converge(etcd.MAIN, group)
    assert recorded == [] and all(ctx.changes == [] for ctx in group)
