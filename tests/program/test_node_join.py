"""Auto-scaled nodes join by TLS bootstrapping with their instance identity
(bootstrap.node.join): each zone's group is one node pool, named in the inventory; its
instances carry the tags the control plane's CSR approver checks; its launch template's user
data is the join script for its zone and endpoint, holding no secret (the node's credential is
the identity document EC2 signs for it, read from IMDSv2 at boot); the metadata service is
IMDSv2 only, one hop (pods cannot read the document); the control plane may describe
instances and nothing more, and the nodes' role gets no permission at all."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import gzip
import json
import os
import re
import shlex
from typing import Any

import pytest
import yaml

from bootstrap.inventory import parse
from bootstrap.node import join
from bootstrap.node import kubelet_config as kc
from bootstrap.services import unit_path
from components.node_pools import MAX_USER_DATA, compressed, join_script, pool_name
from tests.program.mocks import BOOTSTRAP, Evaluation, ca_certificate
from tests.unit.pki_support import example_data

GROUP, TEMPLATE = "aws:autoscaling/group:Group", "aws:ec2/launchTemplate:LaunchTemplate"
NODE_TAGS = ("mzk:cluster", "mzk:role", "mzk:pool")
# What the control-plane role allowed before nodes joined; only DescribeInstances is used
# for the join (and it was there for the cloud provider already).
CP_ACTIONS = {"ec2:DescribeInstances", "ec2:DescribeRegions", "ec2:DescribeRouteTables",
              "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVolumes",
              "ec2:DescribeAvailabilityZones", "elasticloadbalancing:Describe*"}
_PUT = re.compile(r"(cat|base64 -d) > (\S+) <<'MZK_EOF'\n(.*?)\nMZK_EOF\nchmod [0-7]+ \S+\n"
                  r"mv -f \S+ (\S+)", re.S)
# The bootstrap kubeconfig (bootstrap.node.join.kubeconfig_script): the text around the
# token, which the node builds itself and writes with printf.
_KUBECONFIG = re.compile(r"\{ cat <<'MZK_EOF'\n(.*?)\nMZK_EOF\nprintf '    token: %s\\n' "
                         r'"\$token"\ncat <<\'MZK_EOF\'\n(.*?)\nMZK_EOF\n\} > (\S+)\.mzk-tmp \)',
                         re.S)
# A bootstrap token (`<6>.<16>`), the shared secret nodes used to join with.
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
BOOTSTRAP_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def written_files(script: str) -> dict[str, bytes]:
    """path -> content of every file the join script writes (as bootstrap.node.join._put
    writes them: text or base64 in a here-document, then renamed into place); the bootstrap
    kubeconfig with `$token` where the node puts its identity token."""
    found = {}
    for match in _PUT.finditer(script):
        (path,) = shlex.split(match.group(4))
        found[path] = (base64.b64decode("".join(match.group(3).split()))
                       if match.group(1) == "base64 -d" else (match.group(3) + "\n").encode())
    for match in _KUBECONFIG.finditer(script):
        (path,) = shlex.split(match.group(3))
        found[path] = f"{match.group(1)}\n    token: $token\n{match.group(2)}\n".encode()
    return found


def user_data_of(template: Any) -> str:
    """The launch template's user data: base64 of the gzip-compressed script."""
    return gzip.decompress(base64.b64decode(template.inputs["userData"], validate=True)).decode()


def group_tags(group: Any) -> dict[str, tuple[str, bool]]:
    return {t["key"]: (t["value"], t["propagateAtLaunch"]) for t in group.inputs["tags"]}


def template_of(ev: Evaluation, group: Any) -> Any:
    return ev.by_id(group.inputs["launchTemplate"]["id"])


def zone_of(ev: Evaluation, group: Any) -> str:
    (subnet,) = group.inputs["vpcZoneIdentifiers"]
    return str(ev.by_id(subnet).outputs["availabilityZone"])


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
            # A name every node of the pool shares must never be one a kubelet could ask
            # for (the approver takes names from the instance itself, never from tags).
            assert not DNS_SUBDOMAIN.fullmatch(name), name
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
        (reg,) = ev.of_type(BOOTSTRAP)
        scripts = {}
        for group in ev.of_type(GROUP):
            zone = zone_of(ev, group)
            pool = pool_name(zone)
            script = scripts[pool] = user_data_of(template_of(ev, group))
            assert script.startswith("#!/bin/sh\n")
            assert f"join pool {pool} in {zone}" in script
            files = written_files(script)
            kubeconfig = yaml.safe_load(files[kc.BOOTSTRAP_KUBECONFIG])
            (cluster,) = kubeconfig["clusters"]
            assert cluster["cluster"]["server"] == inv.zone(zone).endpoint.url \
                == f"https://{ev.outputs['zoneEndpoints'][zone]}:6443"
            assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() \
                == files[kc.CA_FILE].decode() == reg.outputs["ca_certificate"]
            # The credential is made on the node: its identity document and signature.
            (user,) = kubeconfig["users"]
            assert user["user"] == {"token": "$token"}
            assert f'token="{join.TOKEN_PREFIX}$(b64url < "$iid/document").' in script
            unit = files[unit_path("kubelet")].decode()
            assert f"--node-labels=topology.kubernetes.io/zone={zone}" in unit
        # One script per pool, differing only in what is the pool's (no per-pool secret).
        assert len(set(scripts.values())) == len(scripts) == len(inv.zones)


def test_the_user_data_reads_the_identity_with_imdsv2_only(prod: Evaluation) -> None:
    for template in prod.of_type(TEMPLATE):
        script = user_data_of(template)
        token_put = script.index("-X PUT -H \"X-aws-ec2-metadata-token-ttl-seconds: 300\" "
                                 "http://169.254.169.254/latest/api/token")
        gets = [m.start() for m in re.finditer(r"curl [^\n]*-H \"X-aws-ec2-metadata-token: \$t\"",
                                               script)]
        assert gets and all(g > token_put for g in gets)  # every GET carries the session
        for path in (join.DOCUMENT, join.SIGNATURE, "meta-data/local-hostname",
                     "meta-data/local-ipv4"):
            assert f"imds {path}" in script
        # No GET without the session token anywhere (IMDSv1 is off, and never relied on).
        assert len(re.findall(r"169\.254\.169\.254", script)) == 2


def test_user_data_holds_no_secret(stacks: list[Evaluation]) -> None:
    for ev in stacks:
        templates = ev.of_type(TEMPLATE)
        assert len(templates) == 3
        for template in templates:
            assert "userData" not in template.secret_inputs, template.name
            shown = template.shown_inputs["userData"]
            assert isinstance(shown, str)  # a review shows the script itself
            script = user_data_of(template)
            everything = script + "".join(
                f.decode(errors="replace") for f in written_files(script).values())
            assert not BOOTSTRAP_TOKEN.search(everything), BOOTSTRAP_TOKEN.search(everything)
            assert "PRIVATE KEY" not in everything and "bootstrap-token" not in everything
        (reg,) = ev.of_type(BOOTSTRAP)
        assert "join_tokens" not in reg.outputs


def test_the_metadata_service_is_imdsv2_one_hop_without_tags(stacks: list[Evaluation],
                                                              two_per_zone: Evaluation) -> None:
    for ev in (*stacks, two_per_zone):
        for template in ev.of_type(TEMPLATE):
            assert template.inputs["metadataOptions"] == {
                "httpTokens": "required", "httpEndpoint": "enabled",
                "httpPutResponseHopLimit": 1, "instanceMetadataTags": "disabled"}, template.name


def test_the_control_plane_may_describe_instances_and_nothing_new(
        stacks: list[Evaluation]) -> None:
    for ev in stacks:
        policies = {ev.by_id(p.inputs["role"]).name: p
                    for p in ev.of_type("aws:iam/rolePolicy:RolePolicy")}
        # The nodes' one inline policy is the EBS CSI driver's, tag-scoped
        # (tests/program/test_workload_network.py); nothing for joining.
        assert set(policies) == {"control-plane-role", "nodes-role"}
        assert policies["nodes-role"].name == "nodes-ebs-csi"
        policy = policies["control-plane-role"]
        document = json.loads(policy.inputs["policy"])
        actions = set()
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Resource"] == "*"
            actions |= set(statement["Action"])
        assert "ec2:DescribeInstances" in actions
        assert actions == CP_ACTIONS, actions ^ CP_ACTIONS
        # The nodes' role: assumable by EC2, nothing attached (the identity document needs
        # no permission; the instance reads it from its own metadata service).
        node_roles = [r for r in ev.of_type("aws:iam/role:Role") if r.name == "nodes-role"]
        assert len(node_roles) == 1
        assert not [a for a in ev.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                    if ev.by_id(a.inputs["role"]) is node_roles[0]]


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
    script = join_script(raw, "pool-a", ca)
    # What the launch template carries: the script gzip-compressed (cloud-init unpacks it).
    assert len(compressed(script)) <= MAX_USER_DATA
    assert gzip.decompress(compressed(script)).decode() == script
    noise = base64.b64encode(os.urandom(MAX_USER_DATA)).decode()  # does not compress
    with pytest.raises(ValueError, match="16384 bytes"):
        join_script(raw, "pool-a", ca + noise + "\n")


def test_without_a_ca_a_node_refuses_to_boot_into_anything() -> None:
    raw = inventory_with_pools()
    for ca in (None, ""):
        script = join_script(raw, "pool-a", ca)
        assert script.startswith("#!/bin/sh\n") and script.rstrip().endswith("exit 1")
        assert "kubelet" not in script
    assert "kubelet" in join_script(raw, "pool-a", ca_certificate())


POOLS = [{"name": "pool-a", "zone": "eu-west-1a"}, {"name": "pool-b", "zone": "eu-west-1b"},
         {"name": "pool-c", "zone": "eu-west-1c"}]


def inventory_with_pools() -> dict[str, Any]:
    raw = example_data("ecdsa")
    raw["node_pools"] = copy.deepcopy(POOLS)
    return raw
