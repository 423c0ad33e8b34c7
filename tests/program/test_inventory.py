"""The seam: the `inventory` output is plain data that `bootstrap.inventory.parse` accepts,
and the host keys it pins are the ones the hosts are given (no trust on first use)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives import serialization

from bootstrap.inventory import parse
from bootstrap.node import kubelet_config as kc
from bootstrap.pki.table import Context, apiserver_sans
from tests.program.mocks import Evaluation
from tests.program.test_node_join import user_data_of, written_files


def test_parse_accepts_the_inventory_of_every_stack(stacks: list[Evaluation],
                                                    two_per_zone: Evaluation) -> None:
    for ev in (*stacks, two_per_zone):
        inv = parse(ev.outputs["inventory"], source=f"stack {ev.stack}")
        assert len(inv.zones) == 3
        per_zone = len(inv.control_plane) // 3
        for zone in inv.zones:
            assert len([h for h in inv.control_plane if h.zone == zone.name]) == per_zone
        assert inv.cluster.kubernetes_version == "1.36.0"
        # The API servers are sized for every kubelet the stack can run, not today's count.
        pools = ev.of_type("aws:autoscaling/group:Group")
        assert pools and inv.cluster.max_nodes == sum(g.inputs["maxSize"] for g in pools) \
            + len(inv.control_plane)


def test_inventory_matches_what_was_declared(prod: Evaluation) -> None:
    inv = parse(prod.outputs["inventory"])
    assert inv.regional_endpoint.name == prod.outputs["regionalEndpoint"]
    assert {z.name: z.endpoint.name for z in inv.zones} == prod.outputs["zoneEndpoints"]
    cp = {i.outputs["privateIp"]: i for i in prod.of_type("aws:ec2/instance:Instance")
          if i.inputs["tags"].get("multizone/role") == "control-plane"}
    assert sorted(h.address for h in inv.control_plane) == sorted(cp)
    for host in inv.control_plane:
        assert cp[host.address].outputs["availabilityZone"] == host.zone
        assert host.roles == ("control-plane", "etcd")
    (bastion,) = [i for i in prod.of_type("aws:ec2/instance:Instance")
                  if i.inputs.get("associatePublicIpAddress")]
    assert inv.ssh.bastion and inv.ssh.bastion.address == bastion.outputs["publicIp"]
    assert inv.ssh.private_key == "~/.ssh/mz-prod"
    assert inv.pki.ca_keys_on_hosts is False


def test_pinned_host_keys_are_the_keys_installed_by_user_data(prod: Evaluation) -> None:
    """Each host's user data installs the private key whose public half the inventory pins."""
    inv = parse(prod.outputs["inventory"])
    pinned = {h.name: h.host_key for h in inv.control_plane}
    assert inv.ssh.bastion
    pinned[inv.ssh.bastion.name] = inv.ssh.bastion.host_key
    assert len(set(pinned.values())) == len(pinned) == 4  # one key per host
    for inst in prod.of_type("aws:ec2/instance:Instance"):
        config = yaml.safe_load(inst.inputs["userData"])
        keys = config["ssh_keys"]
        assert config["ssh_deletekeys"] is True and config["ssh_genkeytypes"] == []
        private = serialization.load_ssh_private_key(keys["ed25519_private"].encode(), None)
        derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH).decode()
        assert pinned[config["hostname"]] == derived == keys["ed25519_public"]


def test_every_name_a_client_is_given_is_in_the_api_server_certificate(
        stacks: list[Evaluation], two_per_zone: Evaluation) -> None:
    """Nodes are told their zone's name and users the regional one; the API server
    certificate's SANs, built from the inventory, must hold every one of them."""
    for ev in (*stacks, two_per_zone):
        inv = parse(ev.outputs["inventory"])
        given = {ev.outputs["regionalEndpoint"]}
        for lt in ev.of_type("aws:ec2/launchTemplate:LaunchTemplate"):
            kubeconfig = written_files(user_data_of(lt))[kc.BOOTSTRAP_KUBECONFIG].decode()
            (url,) = re.findall(r"server: (\S+)", kubeconfig)
            given.add(urlsplit(url).hostname)
        assert len(given) == 4  # the regional name and one name per zone
        for host in inv.control_plane:
            sans = apiserver_sans(Context(inventory=inv, host=host))
            assert given <= set(sans.dns), (host.name, given - set(sans.dns))


def test_inventory_is_plain_data(prod: Evaluation) -> None:
    text = yaml.safe_dump(prod.outputs["inventory"])  # safe_dump refuses non-plain objects
    assert parse(yaml.safe_load(text)) == parse(prod.outputs["inventory"])


def test_a_new_operator_key_replaces_no_control_plane_host(prod: Evaluation) -> None:
    """User data is read at first boot; the bootstrap installs keys on running hosts, so
    the instances ignore later user-data changes (a key rotation would otherwise replace
    every control-plane host, and etcd's quorum, at once)."""
    instances = [r for r in prod.of_type("aws:ec2/instance:Instance")
                 if r.inputs["tags"].get("multizone/role") == "control-plane"]
    assert len(instances) == 3
    for inst in instances:
        assert "userData" in prod.monitor.ignore_changes[("aws:ec2/instance:Instance",
                                                          inst.name)]
    inv = parse(prod.outputs["inventory"])
    key = prod.outputs["inventory"]["ssh"]["authorized_keys"][0]
    assert inv.ssh.authorized_keys == (" ".join(key.split()[:2]),)


def test_each_control_plane_host_names_its_own_etcd_volume(prod: Evaluation) -> None:
    inv = parse(prod.outputs["inventory"])
    volumes = {v.outputs["id"] if "id" in v.outputs else v.id: v
               for v in prod.of_type("aws:ebs/volume:Volume")}
    attached = {a.inputs["volumeId"]: a.inputs["instanceId"]
                for a in prod.of_type("aws:ec2/volumeAttachment:VolumeAttachment")}
    by_address = {i.outputs["privateIp"]: i.id for i in prod.of_type("aws:ec2/instance:Instance")}
    for host in inv.control_plane:
        assert host.etcd_volume in volumes
        assert attached[host.etcd_volume] == by_address[host.address]
        assert volumes[host.etcd_volume].inputs["encrypted"] is True
