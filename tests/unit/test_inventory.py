"""The inventory: the example loads, and every kind of mistake is one line naming the field
and the fix, exit code 2, with nothing written."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bootstrap import inventory
from bootstrap.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory.yaml"


@pytest.fixture
def data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_loads_three_zones_three_control_planes_three_nodes():
    inv = inventory.load(EXAMPLE)
    assert len(inv.zones) == 3
    assert sorted(h.zone for h in inv.control_plane) == sorted(z.name for z in inv.zones)
    assert len(inv.nodes) >= 3
    assert inv.cluster.kubernetes_service_ip == "10.96.0.1"
    assert inv.ssh.bastion is not None
    assert inv.endpoints()[0] == inv.regional_endpoint
    assert inv.zone("eu-west-1b").endpoint.url == "https://api-b.mz-example.internal:6443"
    with pytest.raises(dataclasses.FrozenInstanceError):  # nobody edits an inventory
        inv.cluster.name = "other"  # type: ignore[misc]


def test_defaults_fill_optional_fields(data):
    del data["pki"]
    for key in ("service_cidr", "pod_cidr", "dns_domain", "api_port", "egress"):
        data["cluster"].pop(key)
    inv = inventory.parse(data)
    assert inv.pki.key_type == "rsa" and inv.pki.rsa_bits == 2048
    assert inv.pki.ca_keys_on_hosts is True
    assert inv.cluster.egress == "konnectivity"
    assert inv.cluster.api_port == 6443


def _set(path: str, value):
    """A mutation: set data[a][b]... (list indexes as ints); value None deletes."""
    def apply(d: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = d
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return apply


_DELETE = object()


def _drop_cp_in_zone_c(d: dict) -> None:
    d["hosts"] = [h for h in d["hosts"] if h["name"] != "cp-c"]


def _two_zones(d: dict) -> None:
    d["zones"] = d["zones"][:2]
    del d["endpoints"]["zones"]["eu-west-1c"]
    d["hosts"] = [h for h in d["hosts"] if h["zone"] != "eu-west-1c"]


def _duplicate_name(d: dict) -> None:
    d["hosts"][4]["name"] = "cp-a"


def _duplicate_address(d: dict) -> None:
    d["hosts"][3]["address"] = d["hosts"][0]["address"]  # node-a1 takes cp-a's address


def _three_cps_in_a(d: dict) -> None:
    for i, addr in enumerate(("10.0.16.20", "10.0.16.21")):
        extra = copy.deepcopy(d["hosts"][0])
        extra.update(name=f"cp-a{i + 2}", address=addr)
        d["hosts"].append(extra)


BAD = [
    ("unknown key", _set("cluster.colour", "blue"), "cluster.colour: unknown key"),
    ("unknown top key", _set("extras", 1), "extras: unknown key"),
    ("missing key", _set("cluster.name", _DELETE), "cluster.name: missing"),
    ("zone without control plane", _drop_cp_in_zone_c,
     "zone eu-west-1c has no control-plane host"),
    ("fewer than three zones", _two_zones, "at least three zones"),
    ("duplicate host name", _duplicate_name, "hosts[4].name: cp-a is also hosts[0]"),
    ("duplicate address", _duplicate_address,
     "hosts[3].address: 10.0.16.10 is also the address of hosts[0]"),
    ("address outside its zone", _set("hosts.0.address", "10.0.32.10"),
     "hosts[0].address: 10.0.32.10 is outside the subnets of zone eu-west-1a"),
    ("malformed host key", _set("hosts.1.host_key", "ssh-ed25519 not-base64!"),
     "hosts[1].host_key: host key is not valid base64"),
    ("host key of another type", _set("hosts.1.host_key", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAA"),
     "hosts[1].host_key: host key data does not match its type"),
    ("unknown key type", _set("hosts.1.host_key", "ssh-dss AAAA"),
     "hosts[1].host_key: malformed host key"),
    ("service overlaps pod", _set("cluster.service_cidr", "10.244.0.0/20"),
     "cluster.service_cidr: 10.244.0.0/20 overlaps cluster.pod_cidr"),
    ("cidr with host bits", _set("cluster.pod_cidr", "10.244.0.1/16"),
     "cluster.pod_cidr: '10.244.0.1/16' is not a network"),
    ("subnet inside the pod cidr", _set("zones.0.subnets", ["10.244.16.0/20"]),
     "zones[0].subnets[0]: 10.244.16.0/20 overlaps cluster.pod_cidr"),
    ("overlapping zone subnets", _set("zones.1.subnets", ["10.0.16.0/21"]),
     "overlaps 10.0.16.0/20 of zone eu-west-1a"),
    ("bad egress", _set("cluster.egress", "vpn"),
     "cluster.egress: 'vpn' is not one of: ssh-tunnel, konnectivity"),
    ("bad version", _set("cluster.kubernetes_version", 1.31),
     "cluster.kubernetes_version: expected a non-empty string"),
    ("old version", _set("cluster.kubernetes_version", "1.20.4"), "too old"),
    ("unknown role", _set("hosts.3.roles", ["worker"]),
     "hosts[3].roles[0]: 'worker' is not one of: control-plane, etcd, node"),
    ("zone not listed", _set("hosts.3.zone", "eu-west-1d"),
     "hosts[3].zone: 'eu-west-1d' is not a zone listed under zones"),
    ("zone without endpoint", _set("endpoints.zones.eu-west-1b", _DELETE),
     "endpoints.zones.eu-west-1b: missing"),
    ("bad host name", _set("hosts.3.name", "Node_A"), "hosts[3].name: 'Node_A' is not valid"),
    ("three control planes in a zone", _three_cps_in_a, "zone eu-west-1a has 3 control-plane"),
    ("bad key type", _set("pki.key_type", "dsa"), "pki.key_type: 'dsa' is not one of"),
    ("renewal window too long", _set("pki.renew_before_days", 400),
     "pki.renew_before_days: 400 days is not less than pki.validity_days"),
    ("port out of range", _set("hosts.0.ssh_port", 70000), "hosts[0].ssh_port: 70000"),
    ("etcd off the control plane", _set("hosts.3.roles", ["node", "etcd"]),
     "hosts[3].roles: etcd runs on control-plane hosts"),
    ("ssh bastion named like a host", _set("ssh.bastion.name", "cp-a"),
     "ssh.bastion.name: cp-a is also a cluster host"),
]


@pytest.mark.parametrize("label,mutate,expected", BAD, ids=[b[0] for b in BAD])
def test_each_mistake_is_one_line_naming_the_field(data, label, mutate, expected):
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        inventory.parse(data, source="inv.yaml")
    message = str(caught.value)
    assert expected in message, message
    assert message.startswith("inv.yaml: ")
    assert "\n" not in message


def test_not_yaml_names_the_line(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("cluster:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"inv.yaml: line \d+: not valid YAML"):
        inventory.load(bad)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the inventory"):
        inventory.load(tmp_path / "absent.yaml")


def test_cli_bad_inventory_exit_2_one_line_nothing_written(tmp_path, data):
    data["hosts"][0]["address"] = "10.0.32.10"
    bad = tmp_path / "inv.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = tmp_path / "pki"
    proc = subprocess.run([sys.executable, "-m", "bootstrap", "pki", str(bad), "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "hosts[0].address" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_bad_flag_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bootstrap", "pki", str(EXAMPLE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--out" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("cluster", "field", "fix"), [
    ({"cni": "calico"}, "cluster.cni", "bridge, external"),
    ({"dns": {"max_replicas": 2}}, "cluster.dns.max_replicas", "use 3..1000"),
    ({"dns": {"nodes_per_replica": 0}}, "cluster.dns.nodes_per_replica", "use 1..5000"),
    ({"dns": {"nodes_per_replica": "many"}}, "cluster.dns.nodes_per_replica", "whole number"),
    ({"dns": {"replicas": 3}}, "cluster.dns.replicas", "nodes_per_replica, max_replicas"),
    ({"dns": [16]}, "cluster.dns", "mapping"),
])
def test_cli_workload_settings_that_make_no_sense_exit_2_naming_the_field(
        tmp_path, data, cluster, field, fix):
    """The pod network and the DNS rule: one line naming the field and the fix, exit 2,
    before anything is written or any host is asked (apply reads the inventory first)."""
    data["cluster"].update(cluster)
    bad = tmp_path / "inv.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "bootstrap", "apply", str(bad), "--pki-dir",
                           str(tmp_path / "pki")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{field}:" in lines[0] and fix in lines[0], lines[0]
    assert not (tmp_path / "pki").exists()
