"""Auto-scaled nodes join by TLS bootstrapping (bootstrap.node.join): each zone's group is
one node pool, named in the inventory; its instances carry the tags the control plane's CSR
approver looks them up by; its launch template's user data is the join script for its zone,
endpoint and the pool's own token, and is a secret; the control plane may describe instances
and nothing more; the bootstrap resource rotates a token once it is due."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime import settings as runtime_settings

from bootstrap.inventory import parse
from bootstrap.node import csr_approver, join_tokens
from bootstrap.node import kubelet_config as kc
from bootstrap.pki import bundle, generate
from bootstrap.services import unit_path
from components import cluster_bootstrap as cb
from components.node_pools import MAX_USER_DATA, join_script, pool_name
from tests.program.mocks import BOOTSTRAP, BootstrapMocks, Evaluation, ca_certificate
from tests.unit.pki_support import example_data, load

GROUP, TEMPLATE = "aws:autoscaling/group:Group", "aws:ec2/launchTemplate:LaunchTemplate"
NODE_TAGS = ("mzk:cluster", "mzk:role", "mzk:pool")
# What the control-plane role allowed before nodes joined; only DescribeInstances is used
# for the join (and it was there for the cloud provider already).
CP_ACTIONS = {"ec2:DescribeInstances", "ec2:DescribeRegions", "ec2:DescribeRouteTables",
              "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVolumes",
              "ec2:DescribeAvailabilityZones", "elasticloadbalancing:Describe*"}
_PUT = re.compile(r"base64 -d > (\S+) <<'MZK_EOF'\n(.*?)\nMZK_EOF\nchmod [0-7]+ \S+\n"
                  r"mv -f \S+ (\S+)", re.S)


def written_files(script: str) -> dict[str, bytes]:
    """path -> content of every file the join script writes (as bootstrap.node.join._put
    writes them: base64 in a here-document, then renamed into place)."""
    found = {}
    for match in _PUT.finditer(script):
        (path,) = shlex.split(match.group(3))
        found[path] = base64.b64decode("".join(match.group(2).split()))
    return found


def user_data_of(template: Any) -> str:
    return base64.b64decode(template.inputs["userData"], validate=True).decode()


def group_tags(group: Any) -> dict[str, tuple[str, bool]]:
    return {t["key"]: (t["value"], t["propagateAtLaunch"]) for t in group.inputs["tags"]}


def template_of(ev: Evaluation, group: Any) -> Any:
    return ev.by_id(group.inputs["launchTemplate"]["id"])


def zone_of(ev: Evaluation, group: Any) -> str:
    (subnet,) = group.inputs["vpcZoneIdentifiers"]
    return str(ev.by_id(subnet).outputs["availabilityZone"])


def issued(ev: Evaluation) -> dict[str, str]:
    """pool -> token, as the bootstrap resource answered."""
    (reg,) = ev.of_type(BOOTSTRAP)
    return dict(reg.outputs["join_tokens"])


# ------------------------------------------------------------------ the program


def test_the_inventory_names_each_zones_pool_once(stacks: list[Evaluation],
                                                  two_per_zone: Evaluation) -> None:
    for ev in (*stacks, two_per_zone):
        inv = parse(ev.outputs["inventory"], source=f"stack {ev.stack}")
        pools = [(p.name, p.zone) for p in inv.node_pools]
        zones = [z.name for z in inv.zones]
        assert sorted(zone for _, zone in pools) == sorted(zones)  # each zone once
        assert len({name for name, _ in pools}) == len(pools)
        # ... and it is the pool its group's nodes are tagged with.
        tagged = {zone_of(ev, g): group_tags(g)["mzk:pool"][0] for g in ev.of_type(GROUP)}
        assert dict((zone, name) for name, zone in pools) == tagged
        assert all(len(name) <= 63 for name, _ in pools)


def test_nodes_carry_the_tags_the_approver_looks_them_up_by(stacks: list[Evaluation]) -> None:
    for ev in stacks:
        cluster = ev.outputs["inventory"]["cluster"]["name"]
        groups = ev.of_type(GROUP)
        assert len(groups) == 3
        for group in groups:
            pool = pool_name(zone_of(ev, group))
            want = {"mzk:cluster": cluster, "mzk:role": "node", "mzk:pool": pool}
            tags = group_tags(group)
            for key, value in want.items():
                assert tags[key] == (value, True), (group.name, key)  # propagated at launch
            name, propagated = tags["Name"]
            assert propagated
            # The approver looks a node up by Name first: a name every node of the pool
            # shares must never be one a kubelet could ask for.
            assert not csr_approver.DNS_SUBDOMAIN.fullmatch(name), name
            template = template_of(ev, group)
            specs = {s["resourceType"]: s["tags"] for s in template.inputs["tagSpecifications"]}
            assert set(specs) == {"instance", "volume"}
            for kind, launched in specs.items():
                assert {k: launched[k] for k in want} == want, (template.name, kind)
                assert launched["Name"] == name
            assert group.inputs["launchTemplate"]["version"] == "$Latest"


def test_user_data_is_the_join_script_of_the_pool(stacks: list[Evaluation],
                                                  two_per_zone: Evaluation) -> None:
    for ev in (*stacks, two_per_zone):
        inv = parse(ev.outputs["inventory"])
        tokens = issued(ev)
        assert len(set(tokens.values())) == 3
        (reg,) = ev.of_type(BOOTSTRAP)
        for group in ev.of_type(GROUP):
            zone = zone_of(ev, group)
            pool = pool_name(zone)
            script = user_data_of(template_of(ev, group))
            assert script.startswith("#!/bin/sh\n")
            assert f"join pool {pool} in {zone}" in script
            files = written_files(script)
            kubeconfig = yaml.safe_load(files[kc.BOOTSTRAP_KUBECONFIG])
            (cluster,) = kubeconfig["clusters"]
            assert cluster["cluster"]["server"] == inv.zone(zone).endpoint.url \
                == f"https://{ev.outputs['zoneEndpoints'][zone]}:6443"
            assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() \
                == files[kc.CA_FILE].decode() == reg.outputs["ca_certificate"]
            (user,) = kubeconfig["users"]
            assert user["user"]["token"] == tokens[pool]
            everything = script + "".join(f.decode(errors="replace") for f in files.values())
            for other, token in tokens.items():
                if other != pool:
                    assert token not in everything, (pool, other)
                    assert token.split(".")[1] not in everything
            unit = files[unit_path("kubelet")].decode()
            assert f"--node-labels=topology.kubernetes.io/zone={zone}" in unit


def test_user_data_is_a_secret(prod: Evaluation) -> None:
    templates = prod.of_type(TEMPLATE)
    assert len(templates) == 3
    for template in templates:
        assert "userData" in template.secret_inputs, template.name
        shown = template.shown_inputs["userData"]
        assert not isinstance(shown, str)  # a review shows a digest, never the token
    secret_in_state = prod.monitor.additional_secret_outputs[(BOOTSTRAP, "bootstrap")]
    assert "join_tokens" in secret_in_state
    for token in issued(prod).values():
        assert token not in repr(prod.outputs)  # no stack output carries a token


def test_the_control_plane_may_describe_instances_and_nothing_new(
        stacks: list[Evaluation]) -> None:
    for ev in stacks:
        (policy,) = ev.of_type("aws:iam/rolePolicy:RolePolicy")  # no node policy either
        role = ev.by_id(policy.inputs["role"])
        assert role.name == "control-plane-role"
        document = json.loads(policy.inputs["policy"])
        actions = set()
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Resource"] == "*"
            actions |= set(statement["Action"])
        assert "ec2:DescribeInstances" in actions
        assert actions == CP_ACTIONS, actions ^ CP_ACTIONS


def test_the_join_script_fits_in_ec2_user_data_with_the_largest_ca() -> None:
    """EC2 takes 16 KB of user data; the CA is in it twice (file and kubeconfig)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-ca")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256())).public_bytes(serialization.Encoding.PEM).decode()
    raw = inventory_with_pools()
    raw["cluster"]["kubernetes_version"] = "1.36.0"
    tokens = {"pool-a": "abcdef.0123456789abcdef"}
    script = join_script(raw, "pool-a", ca, tokens)
    assert len(script.encode()) <= MAX_USER_DATA
    with pytest.raises(ValueError, match="16384 bytes"):
        join_script(raw, "pool-a", ca + "\n" * MAX_USER_DATA, tokens)


def test_without_a_token_a_node_refuses_to_boot_into_anything() -> None:
    raw = inventory_with_pools()
    for ca, tokens in ((ca_certificate(), {}), (None, {"pool-a": "abcdef.0123456789abcdef"}),
                       ("", None)):
        script = join_script(raw, "pool-a", ca, tokens)
        assert script.startswith("#!/bin/sh\n") and script.rstrip().endswith("exit 1")
        assert "kubelet" not in script


@pytest.fixture
def fresh_mocks() -> BootstrapMocks:
    mocks = BootstrapMocks()
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, preview=False)
    return mocks


@pulumi.runtime.test
def test_in_the_program_the_join_tokens_are_secret(fresh_mocks: BootstrapMocks) -> pulumi.Output:
    """A decorated test: the checks run inside `apply` and the Output is returned."""
    resource = cb.ClusterBootstrap("probe", {"node_pools": [{"name": "pool-a",
                                                             "zone": "eu-west-1a"}]})
    secrecy = asyncio.ensure_future(asyncio.gather(
        resource.join_tokens.is_secret(), resource.ca_certificate.is_secret()))

    def check(values: list[Any]) -> None:
        tokens, flags = values
        assert set(tokens) == {"pool-a"} and re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}",
                                                            tokens["pool-a"])
        assert flags == [True, False], flags

    return pulumi.Output.all(resource.join_tokens,
                             pulumi.Output.from_input(secrecy)).apply(check)


# ------------------------------------------------------------------ the bootstrap resource

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
POOLS = [{"name": "pool-a", "zone": "eu-west-1a"}, {"name": "pool-b", "zone": "eu-west-1b"},
         {"name": "pool-c", "zone": "eu-west-1c", "join_token_hours": 2}]


def inventory_with_pools() -> dict[str, Any]:
    raw = example_data("ecdsa")
    raw["node_pools"] = copy.deepcopy(POOLS)
    return raw


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("pki") / "pki"
    generate(load(inventory_with_pools()), where, workers=1)
    return where


def token(pool: str, expires_in: dt.timedelta, now: dt.datetime = NOW) -> join_tokens.JoinToken:
    fresh = join_tokens.new(pool, 1, now)
    return join_tokens.JoinToken(pool, fresh.token_id, fresh.secret, now + expires_in)


def state_with(pki_dir: Path, tmp_path: Path, tokens: dict[str, join_tokens.JoinToken]) -> str:
    """The resource's `pki` after an apply that left these tokens."""
    work = tmp_path / "pki"
    shutil.copytree(pki_dir, work)
    join_tokens.save(work, tokens)
    return cb._dump(bundle.export_dir(work))


def outputs(pki: str) -> dict[str, Any]:
    return {"inventory": inventory_with_pools(), "pki": pki, "plan": [], "pki_import": ""}


def diff(pki: str) -> Any:
    """The provider's diff when nothing but time changed (news = the last apply's inputs)."""
    olds = outputs(pki)
    return cb.ClusterBootstrapProvider().diff("id", olds, copy.deepcopy(olds))


def fresh_tokens(now: dt.datetime) -> dict[str, join_tokens.JoinToken]:
    return {"pool-a": token("pool-a", dt.timedelta(hours=23), now),
            "pool-b": token("pool-b", dt.timedelta(hours=13), now),
            "pool-c": token("pool-c", dt.timedelta(hours=1, minutes=30), now)}


def test_diff_is_no_change_while_every_token_is_fresh(pki_dir: Path, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    result = diff(state_with(pki_dir, tmp_path, fresh_tokens(now)))
    assert result.changes is False


@pytest.mark.parametrize("pool,left", [("pool-a", dt.timedelta(hours=11)),
                                       ("pool-c", dt.timedelta(minutes=50)),
                                       ("pool-b", None)])
def test_diff_updates_when_a_token_is_due_or_missing(pki_dir: Path, tmp_path: Path, pool: str,
                                                     left: dt.timedelta | None) -> None:
    now = dt.datetime.now(dt.UTC)
    tokens = fresh_tokens(now)
    if left is None:
        del tokens[pool]
    else:
        tokens[pool] = token(pool, left, now)
    result = diff(state_with(pki_dir, tmp_path, tokens))
    assert result.changes is True
    assert result.replaces == []  # an update: never a new resource


def test_due_pools_honour_each_pools_lifetime(pki_dir: Path, tmp_path: Path) -> None:
    tokens = fresh_tokens(NOW)
    tokens["pool-b"] = token("pool-b", dt.timedelta(hours=11, minutes=59))  # 24 h: due
    tokens["pool-c"] = token("pool-c", dt.timedelta(hours=1, minutes=1))  # 2 h: not yet
    pki = state_with(pki_dir, tmp_path, tokens)
    assert cb.due_pools(inventory_with_pools(), pki, NOW) == ["pool-b"]
    assert cb.due_pools(inventory_with_pools(), pki, NOW + dt.timedelta(minutes=2)) == \
        ["pool-b", "pool-c"]
    assert {p: t.value for p, t in cb.tokens_in(pki).items()} == \
        {p: t.value for p, t in tokens.items()}


def test_check_rotates_a_due_token_and_keeps_fresh_ones(pki_dir: Path, tmp_path: Path) -> None:
    """check's local half (`_advance`): what update then applies and the templates get."""
    work = tmp_path / "pki"
    shutil.copytree(pki_dir, work)
    before = fresh_tokens(NOW)
    before["pool-a"] = token("pool-a", dt.timedelta(hours=3))
    del before["pool-b"]
    join_tokens.save(work, before)
    inventory = load(inventory_with_pools())
    lines = cb.rotate_join_tokens(inventory, work, NOW)
    after = join_tokens.load(work)
    assert after["pool-c"] == before["pool-c"]
    for pool in ("pool-a", "pool-b"):
        assert after[pool].value != getattr(before.get(pool), "value", None)
        assert after[pool].expires == NOW + dt.timedelta(hours=24)
    assert [line.split(" for node pool ")[1].split(",")[0] for line in lines] == \
        ["pool-a", "pool-b"]
    assert "pool-a, valid 24 h (the current one expires 2026-12-02T15:00:00Z)" in lines[0]
    assert cb.rotate_join_tokens(inventory, work, NOW) == []  # now fresh: nothing to do
    assert cb.due_pools(inventory_with_pools(), cb._dump(bundle.export_dir(work)), NOW) == []


class _Report:
    def lines(self) -> list[str]:
        return ["cp-a: nodes: write bootstrap-token Secret"]


def test_apply_outputs_each_pools_current_token(pki_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cb, "wait_for_ssh", lambda _inventory: None)
    monkeypatch.setattr(cb, "execute", lambda *_a, **_k: _Report())
    tokens = fresh_tokens(NOW)
    props = {**outputs(state_with(pki_dir, tmp_path, tokens)), "join_tokens": None}
    outs = cb.ClusterBootstrapProvider().update("id", {}, props).outs
    assert outs["join_tokens"] == {p: t.value for p, t in tokens.items()}
    assert "join_tokens" in cb.SECRET_PROPERTIES
    del tokens["pool-b"]
    props["pki"] = state_with(pki_dir, tmp_path / "again", tokens)
    with pytest.raises(cb.BootstrapFailed, match="pool-b"):
        cb.ClusterBootstrapProvider().update("id", {}, props)
