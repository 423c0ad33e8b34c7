"""Settings: the stacks are valid, and each mistake is one line naming the key and the fix."""

from __future__ import annotations

import pulumi
import pytest

from bootstrap import inventory as inventory_module
from bootstrap.errors import ConfigError
from components.inventory import build
from components.settings import SettingsError, from_config
from tests.program.mocks import AwsMocks, evaluate
from tests.program.stackconfig import STACKS, stack_config, stack_values

ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]


def zones_with(**private: str) -> list[dict[str, str]]:
    """The prod zones, with some private subnets replaced (keyed by zone letter)."""
    zones = stack_values("prod")["multizone:zones"]
    return [{**z, "privateSubnet": private.get(z["name"][-1], z["privateSubnet"])}
            for z in zones]


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_is_valid(stack: str) -> None:
    s = from_config(stack_config(stack), stack, ZONES)
    assert s.stack == stack and len(s.zones) == 3
    assert s.max_nodes <= 5000


def test_the_test_stack_is_short_lived_and_cheap() -> None:
    s = from_config(stack_config("test"), "test", ZONES)
    assert (s.ephemeral, s.protect, s.nat_gateways) == (True, False, "single")
    assert s.expires_at and s.node_pool.max_size <= 3


def pki_with(**values: object) -> dict:
    return {**stack_values("prod")["multizone:pki"], **values}


def ssh_with(**values: object) -> dict:
    return {**stack_values("prod")["multizone:ssh"], **values}


BAD = [
    ({"controlPlanePerZone": 3}, "multizone:controlPlanePerZone: 3 is out of range; use 1 or 2"),
    ({"controlPlanePerZone": 0}, "multizone:controlPlanePerZone: 0 is out of range"),
    ({"zones": stack_values("prod")["multizone:zones"][:2]},
     "multizone:zones: 2 zone(s) given; list three or more distinct zones"),
    ({"zones": [*stack_values("prod")["multizone:zones"][:2],
                {**stack_values("prod")["multizone:zones"][1], "publicSubnet": "10.0.3.0/24",
                 "privateSubnet": "10.0.64.0/20"}]},
     "multizone:zones[2].name: eu-west-1b is listed twice"),
    ({"zones": [*stack_values("prod")["multizone:zones"][:2],
                {**stack_values("prod")["multizone:zones"][2], "name": "us-east-1c"}]},
     "multizone:zones[2].name: us-east-1c is not a zone of region eu-west-1"),
    ({"zones": zones_with(c="10.1.48.0/20")},
     "multizone:zones[2].privateSubnet: 10.1.48.0/20 is outside multizone:vpcCidr 10.0.0.0/16"),
    ({"zones": zones_with(b="10.0.16.0/20")},
     "multizone:zones[1].privateSubnet: 10.0.16.0/20 overlaps multizone:zones[0].privateSubnet"),
    ({"zones": zones_with(a="10.0.16.0/28")},
     "multizone:zones[0].privateSubnet: 10.0.16.0/28 holds 11 hosts but the zone may need 52"),
    ({"serviceCidr": "10.96.0.1/12"}, "multizone:serviceCidr: '10.96.0.1/12' is not an IPv4 "
                                     "network with its host bits zero"),
    ({"serviceCidr": "10.0.0.0/16", "podCidr": "10.1.0.0/16"},
     "multizone:vpcCidr: 10.0.0.0/16 overlaps multizone:serviceCidr 10.0.0.0/16"),
    ({"podCidr": "10.96.0.0/16"},
     "multizone:serviceCidr: 10.96.0.0/12 overlaps multizone:podCidr 10.96.0.0/16"),
    ({"nodePool": {"max": 1700, "podsPerNode": 10}},
     "multizone:nodePool.max: 3 zones x (1700 nodes + 1 control-plane) = 5103 nodes exceeds "
     "5000; lower it to 1665 or less"),
    ({"nodePool": {"max": 1000, "podsPerNode": 110}},
     "multizone:nodePool.podsPerNode: 3003 nodes x 110 pods = 330330 pods exceeds 150000"),
    ({"nodePool": {"max": 400, "podsPerNode": 100, "containersPerPod": 3}},
     "multizone:nodePool.containersPerPod: 120300 pods x 3 containers = 360900 exceeds 300000"),
    ({"nodePool": {"podsPerNode": 111}},
     "multizone:nodePool.podsPerNode: 111 is out of range; Kubernetes supports at most 110"),
    ({"nodePool": {"min": 5, "desired": 2, "max": 10}},
     "multizone:nodePool: min 5, desired 2, max 10 are out of order"),
    ({"adminCidrs": ["0.0.0.0/0"]},
     "multizone:adminCidrs[0]: 0.0.0.0/0 admits the whole internet to SSH"),
    ({"adminCidrs": ["0.0.0.0/1"]},
     "multizone:adminCidrs[0]: 0.0.0.0/1 admits a large part of the internet to SSH"),
    ({"kubernetesVersion": "1.31"}, "multizone:kubernetesVersion: '1.31' is not valid"),
    ({"kubernetesVersion": "1.31.2"}, "multizone:kubernetesVersion: 1.31.2 has no pinned "
                                      "release checksums; use one of 1.36.0"),
    ({"clusterName": "Prod_Cluster"}, "multizone:clusterName: 'Prod_Cluster' is not valid"),
    ({"controlPlanesPerZone": 1}, "multizone:controlPlanesPerZone: unknown key"),
    ({"imageId": None}, "multizone:imageId: missing; add it"),
    ({"protect": False}, "multizone:protect: is false, but the prod stack must always be "
                         "protected from deletion; set multizone:protect: true"),
    ({"egress": "vpn"}, "multizone:egress: 'vpn' is not allowed; use one of: konnectivity, "
                        "ssh-tunnel"),
    ({"apiPort": 2379}, "multizone:apiPort: 2379 is taken by another service"),
    # The inventory's rules (bootstrap/rules.py), named as the stack file names the key.
    ({"pki": pki_with(rsaBits=1024)},
     "multizone:pki.rsaBits: 1024 is not one of: 2048, 3072, 4096; use one of them"),
    ({"pki": pki_with(rsaBits="2048")},
     "multizone:pki.rsaBits: expected a whole number, got the string '2048'"),
    ({"pki": pki_with(validityDays=-30)},
     "multizone:pki.validityDays: -30 is out of range; use 1..3650"),
    ({"pki": pki_with(caValidityDays=0)},
     "multizone:pki.caValidityDays: 0 is out of range; use 1..36500"),
    ({"pki": pki_with(renewBeforeDays=400)},
     "multizone:pki.renewBeforeDays: 400 days is not less than multizone:pki.validityDays "
     "(365); make it smaller"),
    ({"pki": pki_with(validityDays=3650, caValidityDays=365, renewBeforeDays=30)},
     "multizone:pki.validityDays: 3650 days: certificates would outlive their CA "
     "(multizone:pki.caValidityDays is 365)"),
    ({"pki": pki_with(keyType="dsa")}, "multizone:pki.keyType: 'dsa' is not one of: rsa, ecdsa"),
    ({"pki": []}, "multizone:pki: expected a mapping, got a list"),
    ({"pki": 0}, "multizone:pki: expected a mapping, got 0"),
    ({"serviceCidr": 167772160}, "multizone:serviceCidr: expected a network in CIDR form, "
                                 "got 167772160; write it as text"),
    ({"serviceCidr": "10.96.0.0"}, "multizone:serviceCidr: '10.96.0.0' is not an IPv4 network"),
    ({"serviceCidr": "10.96.0.0/29"}, "multizone:serviceCidr: 10.96.0.0/29 is too small; "
                                      "use /28 or larger"),
    ({"ssh": ssh_with(publicKey="ssh-ed25519 AAAA")},
     "multizone:ssh.publicKey: public key is truncated"),
    ({"ssh": ssh_with(publicKey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMBzosF0vQsktMpiALXtlLBT"
                                "ZTv4yORanbYQ")},  # 12 characters short
     "multizone:ssh.publicKey: public key is truncated or corrupt"),
    ({"ssh": ssh_with(publicKey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMBzosF0vQsktMpiALXtlLBTZTv4"
                                "yORanbYQRoZ12Zw6 me\nssh-rsa AAAA other")},
     "multizone:ssh.publicKey: 'ssh-ed25519 AAAA"),
    ({"ssh": ssh_with(user="Admin")}, "multizone:ssh.user: 'Admin' is not valid"),
    ({"ssh": ssh_with(privateKeyPath="~/.ssh/mz-prod\n")},
     "multizone:ssh.privateKeyPath: '~/.ssh/mz-prod\\n' holds a line break"),
    ({"kubernetesVersion": "1.36.0\n"},
     "multizone:kubernetesVersion: '1.36.0\\n' holds a line break"),
    ({"kubernetesVersion": "1.\uff13\uff16.0"},
     "multizone:kubernetesVersion: '1.\uff13\uff16.0' is not valid"),
    ({"clusterName": "mz-prod\n"}, "multizone:clusterName: 'mz-prod\\n' holds a line break"),
    ({"dnsDomain": "-cluster.local"}, "multizone:dnsDomain: '-cluster.local' is not a DNS domain"),
    ({"imageId": "ami-0123456789abcdef0\n"}, "multizone:imageId: 'ami-0123456789abcdef0\\n'"),
    ({"expiresAt": "2026-0\uff11-01"}, "multizone:expiresAt: '2026-0\uff11-01' is not a date"),
    # Per-zone control-plane overrides (components/rollout_guard.py).
    ({"controlPlaneZones": {"eu-west-1d": {"imageId": "ami-0123456789abcdef1"}}},
     "multizone:controlPlaneZones.eu-west-1d: is not one of multizone:zones; use one of: "
     "eu-west-1a, eu-west-1b, eu-west-1c"),
    ({"controlPlaneZones": {"eu-west-1a": {"imageId": "ami-xyz"}}},
     "multizone:controlPlaneZones.eu-west-1a.imageId: 'ami-xyz' is not valid; give an AMI id"),
    ({"controlPlaneZones": {"eu-west-1a": {"instanceType": "large"}}},
     "multizone:controlPlaneZones.eu-west-1a.instanceType: 'large' is not valid; give an EC2 "
     "instance type"),
    ({"controlPlaneZones": {"eu-west-1a": {"ami": "ami-0123456789abcdef1"}}},
     "multizone:controlPlaneZones.eu-west-1a.ami: unknown key; use one of: imageId, "
     "instanceType"),
    ({"controlPlaneZones": {"eu-west-1a": {}}},
     "multizone:controlPlaneZones.eu-west-1a: is empty; give imageId and/or instanceType"),
    ({"controlPlaneZones": {"eu-west-1a": "ami-0123456789abcdef1"}},
     "multizone:controlPlaneZones.eu-west-1a: expected a mapping, got the string"),
    ({"controlPlaneZones": ["eu-west-1a"]},
     "multizone:controlPlaneZones: expected a mapping of zone -> {imageId, instanceType}, got "
     "a list"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD, ids=[e.split(":")[1] for _, e in BAD])
def test_each_bad_setting_is_one_line_naming_key_and_fix(overrides: dict, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_config(stack_config("prod", **overrides), "prod", ZONES)
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]
    assert "\n" not in problems[0] and ";" in problems[0]  # one line: the problem; the fix
    assert isinstance(caught.value, ConfigError)


def test_an_ephemeral_stack_needs_an_expiry() -> None:
    with pytest.raises(SettingsError) as caught:
        from_config(stack_config("test", expiresAt=None), "test", ZONES)
    assert caught.value.problems == (
        "multizone:expiresAt: missing for an ephemeral stack; add the date it may be destroyed "
        "(YYYY-MM-DD)",)


def test_only_prod_must_be_protected() -> None:
    """The rule names the stack, not the file: a dev stack may go unprotected."""
    assert from_config(stack_config("dev", protect=False), "dev", ZONES).protect is False
    assert from_config(stack_config("prod"), "prod", ZONES).protect is True


def test_zone_not_offered_by_the_region_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"zones\[2\].name: eu-west-1c is not available"):
        from_config(stack_config("prod"), "prod", ["eu-west-1a", "eu-west-1b"])


def test_all_mistakes_are_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        from_config(stack_config("prod", controlPlanePerZone=3, adminCidrs=["0.0.0.0/0"]),
                    "prod", ZONES)
    assert [p.split(":")[1] for p in caught.value.problems] == [
        "controlPlanePerZone", "adminCidrs[0]"]


def test_program_stops_before_declaring_anything() -> None:
    mocks = AwsMocks()
    with pytest.raises(pulumi.RunError) as caught:
        evaluate("prod", stack_config("prod", controlPlanePerZone=3), mocks)
    assert str(caught.value).startswith("multizone:controlPlanePerZone: 3 is out of range")
    assert mocks.resources == []


def test_a_key_that_is_not_text_is_one_line() -> None:
    config = {**stack_config("prod"), 7: "x"}  # type: ignore[dict-item]
    assert from_config(config, "prod", ZONES).stack == "prod"  # not ours: ignored
    with pytest.raises(SettingsError) as caught:
        from_config(stack_config("prod", nodePool='{"1": 2}'), "prod", ZONES)
    assert caught.value.problems[0].startswith("multizone:nodePool.1: unknown key")


def test_a_deeply_nested_json_value_is_one_line_not_a_recursion_error() -> None:
    config = {**stack_config("prod"), "multizone:zones": "[" * 100_000 + "]" * 100_000}
    with pytest.raises(SettingsError) as caught:
        from_config(config, "prod", ZONES)
    assert [p.split(": ")[0] for p in caught.value.problems] == ["multizone:zones"]


@pytest.mark.parametrize("pki", [
    {"keyType": "ecdsa"},
    {"keyType": "rsa", "rsaBits": 4096, "caValidityDays": 36500, "validityDays": 3650,
     "renewBeforeDays": 3649, "caKeysOnHosts": True},
    {"rsaBits": 3072, "validityDays": 1, "renewBeforeDays": 0},
])
def test_pki_settings_the_stack_accepts_the_inventory_accepts(pki: dict) -> None:
    """One set of rules: what passes `check-stack` passes the bootstrap, unchanged."""
    s = from_config(stack_config("prod", pki=pki), "prod", ZONES)
    hosts = [{"name": f"mz-prod-cp-{z[-1]}", "zone": z, "address": f"10.0.{16 * (i + 1)}.10",
              "host_key": stack_values("prod")["multizone:ssh"]["publicKey"],
              "etcd_volume": f"vol-0{i}abcdef01234567"}
             for i, z in enumerate(ZONES)]
    bastion = {"name": "mz-prod-bastion", "address": "10.0.0.10",
               "host_key": hosts[0]["host_key"]}
    data = build(s, hosts, bastion, "lb.example.internal",
                 {z: f"api-{z[-1]}.mz-prod.internal" for z in ZONES})
    assert inventory_module.parse(data).pki == s.pki


def test_a_zone_override_applies_to_that_zone_only() -> None:
    """`controlPlaneZones`: one zone on its own AMI and type, the others on the stack's."""
    base = from_config(stack_config("prod"), "prod", ZONES)
    s = from_config(stack_config("prod", controlPlaneZones={
        "eu-west-1b": {"imageId": "ami-0fedcba9876543210", "instanceType": "m7i.xlarge"},
        "eu-west-1c": {"instanceType": "m7i.large"}}), "prod", ZONES)
    assert [(s.control_plane_image(z), s.control_plane_type(z)) for z in ZONES] == [
        (base.image_id, base.control_plane_instance_type),
        ("ami-0fedcba9876543210", "m7i.xlarge"),
        (base.image_id, "m7i.large")]
    assert base.control_plane_zones == {} and "ami-0fedcba9876543210" != base.image_id
    assert [base.control_plane_image(z) for z in ZONES] == [base.image_id] * 3


def test_every_bad_zone_override_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        from_config(stack_config("prod", controlPlaneZones={
            "eu-west-1a": {"imageId": "bad", "instanceType": "x", "extra": 1}}), "prod", ZONES)
    assert [p.split(":")[1] for p in caught.value.problems] == [
        "controlPlaneZones.eu-west-1a.extra", "controlPlaneZones.eu-west-1a.imageId",
        "controlPlaneZones.eu-west-1a.instanceType"]
