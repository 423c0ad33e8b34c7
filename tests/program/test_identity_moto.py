"""Ec2Identity against moto's real DescribeInstances (a moto server, our own SigV4 client):
instances looked up by ID, many per call, cached; an unknown ID does not sink its batch; a
Name tag is never a name the instance owns; another cluster's or role's instance is no node."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from bootstrap.node import instance_identity
from bootstrap.node.csr_rules import decide
from bootstrap.node.instance_identity import Ec2Identity, LookupFailed
from tests.unit.csr_support import make_csr

POOL_NAME = "c1-lab-a-node"  # the Name tag an auto scaling group gives all its instances


@pytest.fixture(scope="module")
def moto_ec2() -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """A moto server with nodes of cluster c1 (and one of c2, a control-plane instance, a
    stopped and a terminated node); yields its URL and the instances as EC2 made them."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}/"
    with pytest.MonkeyPatch.context() as env:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.setenv(key, "testing")
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        ec2 = boto3.client("ec2", endpoint_url=url, region_name="eu-west-1")

        def run(cluster: str = "c1", role: str = "node", pool: str = "lab-a") -> dict[str, Any]:
            tags = {"Name": POOL_NAME, "mzk:cluster": cluster, "mzk:role": role,
                    "mzk:pool": pool}
            return ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                     TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                         {"Key": k, "Value": v} for k, v in tags.items()]}],
                                     )["Instances"][0]

        made = {f"node-{n}": run() for n in range(1, 6)}
        made["stopped"], made["terminated"] = run(), run()
        made["other-cluster"], made["control-plane"] = run(cluster="c2"), run(role="control-plane")
        ec2.stop_instances(InstanceIds=[made["stopped"]["InstanceId"]])
        ec2.terminate_instances(InstanceIds=[made["terminated"]["InstanceId"]])
    yield url, made
    reset = http.client.HTTPConnection(host, port, timeout=10)  # moto's state is global
    reset.request("POST", "/moto-api/reset")
    reset.getresponse().read()
    reset.close()
    server.stop()


@pytest.fixture()
def ec2(moto_ec2: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Ec2Identity, Any, list[float]]:
    url, made = moto_ec2
    monkeypatch.setenv("MZK_EC2_ENDPOINT", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    clock = [1_000_000.0]
    return Ec2Identity("eu-west-1", "c1", clock=lambda: clock[0]), made, clock


def test_an_instance_is_found_by_its_id_named_by_its_private_dns_name(ec2: Any) -> None:
    source, made, _ = ec2
    node = made["node-1"]
    found = source.by_id(node["InstanceId"])
    assert found is not None
    assert (found.name, found.pool, found.state, found.instance_id) == (
        node["PrivateDnsName"], "lab-a", "running", node["InstanceId"])
    assert found.name != POOL_NAME and found.dns_names == (node["PrivateDnsName"],)
    assert node["PrivateIpAddress"] in found.addresses
    assert found.account and found.account.isdigit()  # the reservation's owner
    assert source.lookup(node["PrivateDnsName"]) == found


def test_a_name_tag_is_never_a_name(ec2: Any) -> None:
    source, made, _ = ec2
    assert source.lookup(POOL_NAME) is None
    node = made["node-2"]
    csr = make_csr(user=f"mzk:instance:{node['InstanceId']}", cn=f"system:node:{POOL_NAME}")
    decision, reason = decide(csr, source, lambda name: False)
    assert decision == "deny" and "its private DNS name" in reason
    honest = make_csr(user=f"mzk:instance:{node['InstanceId']}",
                      cn=f"system:node:{node['PrivateDnsName']}")
    assert decide(honest, source, lambda name: False)[0] == "approve"


def test_states_other_clusters_and_roles(ec2: Any) -> None:
    source, made, _ = ec2
    assert source.by_id(made["stopped"]["InstanceId"]).state == "stopped"
    assert source.by_id(made["terminated"]["InstanceId"]).state == "terminated"
    assert source.by_id(made["other-cluster"]["InstanceId"]) is None
    assert source.by_id(made["control-plane"]["InstanceId"]) is None


def test_lookups_are_batched_and_cached(ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source, made, clock = ec2
    ids = [made[f"node-{n}"]["InstanceId"] for n in range(1, 6)]
    source.prefetch(ids)
    assert source.calls == 1  # five instances, one call
    assert all(source.by_id(i).state == "running" for i in ids)  # type: ignore[union-attr]
    assert source.calls == 1  # served from the cache
    clock[0] += instance_identity.CACHE_SECONDS + 1
    monkeypatch.setattr(instance_identity, "BATCH", 2)
    source.prefetch(ids)
    assert source.calls == 1 + 3  # stale again: ceil(5 / 2) calls


def test_an_unknown_id_does_not_sink_its_batch(ec2: Any) -> None:
    source, made, _ = ec2
    known = made["node-3"]["InstanceId"]
    unknown = "i-0123456789abcdef0"
    source.prefetch([known, unknown, "not-an-id"])
    assert source.by_id(known) is not None
    assert source.by_id(unknown) is None and source.by_id("not-an-id") is None
    assert source.calls == 2  # refused once naming the unknown ID, then the rest


def test_errors_are_lookup_failures(ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _, _ = ec2
    monkeypatch.setattr(source, "endpoint", source.endpoint + "no-such-path")
    with pytest.raises(LookupFailed):
        source.by_id("i-0123456789abcdef1")
