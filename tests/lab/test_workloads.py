"""Real workloads on the real lab: the pod network across zones, kube-proxy and the
`kubernetes` Service, CoreDNS, and volumes behind the zones' storage classes, on inventory
nodes and on an auto-scaled node (`lab launch`) that got all of it from its user data.

One lab (three control-plane hosts, three nodes, one launched node in lab-b); the tests run
in file order, each leaving the lab converged.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.addons import ebs_csi, images
from bootstrap.addons.context import AddonContext
from bootstrap.addons.dns_scale import DnsRule
from bootstrap.apply_command import execute
from bootstrap.lab import build, launch
from bootstrap.node import kubelet_config as kc
from bootstrap.node import oci_archive

from . import workload
from .conftest import (
    KUBECTL,
    Lab,
    apply,
    in_host,
    kubectl,
    lab_unavailable,
    require_k8s_binaries,
    running_lab,
    until,
)

ZONES = ("lab-a", "lab-b", "lab-c")
NS = "work"
CLIENT_IMAGE = "mzk.local/client:lab"
CLIENT_ARCHIVE = "/var/lib/mzk/images/client.tar"
LAUNCHED: dict[str, launch.Launched] = {}


def client_archive() -> bytes:
    """busybox (wget, nslookup) and kubectl: a pod's view of the cluster's services."""
    blobs = oci_archive.image_blobs(
        [("bin", 0o755, None), ("bin/busybox", 0o755, workload.BUSYBOX.read_bytes()),
         ("bin/kubectl", 0o755, Path(KUBECTL()).read_bytes()), ("tmp", 0o1777, None)],
        {"Entrypoint": ["/bin/busybox"], "Cmd": ["sh"], "Env": ["PATH=/bin", "HOME=/tmp"],
         "WorkingDir": "/"})
    return oci_archive.archive(CLIENT_IMAGE, blobs)


def import_client(lab: Lab, node: str, archive: bytes) -> None:
    pid = json.loads((lab.dir / "lab-state.json").read_text())["pids"][node]
    done = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "-m", "sh", "-c",
         f"mkdir -p /var/lib/mzk/images && cat > {CLIENT_ARCHIVE}.tmp && "
         f"mv {CLIENT_ARCHIVE}.tmp {CLIENT_ARCHIVE} && ctr --address "
         f"/run/containerd/containerd.sock -n k8s.io images import {CLIENT_ARCHIVE}"],
        input=archive, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def get_json(lab: Lab, args: str) -> Any:
    return json.loads(kubectl(lab, "cp-b", f"get {args} -o json").stdout)


def kubectl_apply(lab: Lab, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl(lab, "cp-b", "apply -f -", stdin=body.encode())


def ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in node["status"].get("conditions", []))


def zone_of_node(lab: Lab) -> dict[str, str]:
    return {n["metadata"]["name"]: n["metadata"]["labels"].get(kc.ZONE_LABEL, "")
            for n in get_json(lab, "nodes")["items"]}


@pytest.fixture(scope="module")
def wlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.fail(reason)
    require_k8s_binaries()
    with running_lab(tmp_path_factory, "wlab", workers=3) as running:
        started = time.monotonic()
        execute(running.inventory, running.dir / "pki", dry_run=False)
        print(f"\napply: {time.monotonic() - started:.1f} s")
        node = launch.launch(running.dir, "lab-b")
        LAUNCHED["node"] = node

        def admitted() -> bool:
            found = {n["metadata"]["name"]: n for n in get_json(running, "nodes")["items"]}
            n = found.get(node.name)
            return bool(n and ready(n) and not [t for t in n["spec"].get("taints") or []
                                               if t["key"] == kc.CHECKS_TAINT])

        until(admitted, 150, f"{node.name} Ready and admitted")
        archive = client_archive()
        for name in [*(n.name for n in running.inventory.nodes), node.name]:
            workload.import_on(running, name)
            import_client(running, name, archive)
        kubectl(running, "cp-b", f"create namespace {NS}")
        yield running


def all_nodes(lab: Lab) -> list[str]:
    return [*(n.name for n in lab.inventory.nodes), LAUNCHED["node"].name]


def kube_system_pods(lab: Lab) -> list[dict[str, Any]]:
    return list(get_json(lab, "pods -n kube-system")["items"])


def pod_ready(pod: dict[str, Any]) -> bool:
    return (pod["status"].get("phase") == "Running"
            and all(c.get("ready") for c in pod["status"].get("containerStatuses", []))
            and not pod["metadata"].get("deletionTimestamp"))


def test_kube_proxy_runs_on_every_node_and_coredns_in_every_zone(wlab: Lab) -> None:
    nodes = all_nodes(wlab)
    zones = zone_of_node(wlab)

    def settled() -> bool:
        pods = kube_system_pods(wlab)
        proxies = {p["spec"].get("nodeName") for p in pods
                   if p["metadata"]["labels"].get("k8s-app") == "kube-proxy" and pod_ready(p)}
        dns = [p for p in pods if p["metadata"]["labels"].get("k8s-app") == "kube-dns"
               and pod_ready(p)]
        return set(nodes) <= proxies and {zones[p["spec"]["nodeName"]] for p in dns} == set(
            ZONES)

    took = until(settled, 180, "kube-proxy on every node, CoreDNS ready in every zone")
    print(f"\nadd-ons ready {took:.1f} s after the launched node was admitted")
    pods = kube_system_pods(wlab)
    restarts = {p["metadata"]["name"]: c["restartCount"] for p in pods
                for c in p["status"].get("containerStatuses", []) if c["restartCount"]}
    assert restarts == {}, restarts
    # Each zone's kube-proxy talks to its own zone's endpoint, with the node-proxier role.
    for zone in ZONES:
        config = get_json(wlab, f"configmap kube-proxy-{zone} -n kube-system")["data"]
        assert wlab.inventory.zone(zone).endpoint.url in config["kubeconfig.conf"]
    binding = get_json(wlab, "clusterrolebinding multizone-k8s:kube-proxy")
    assert binding["roleRef"]["name"] == "system:node-proxier"
    service = get_json(wlab, "service kube-dns -n kube-system")
    assert service["spec"]["clusterIP"] == wlab.inventory.cluster.dns_address
    assert service["metadata"]["labels"]["kubernetes.io/cluster-service"] == "true"
    info = kubectl(wlab, "cp-b", "cluster-info").stdout
    assert "CoreDNS is running at" in info, info


def zone_web(zone: str) -> list[dict[str, Any]]:
    """Two web pods pinned to `zone` and a Service of its own for them."""
    labels = {"app": "web", "zone": zone}
    deployment = workload.spread_deployment(f"web-{zone}", NS, 2)
    spec = deployment["spec"]
    spec["selector"] = {"matchLabels": labels}
    spec["template"]["metadata"]["labels"] = labels
    spec["template"]["spec"]["nodeSelector"] = {kc.ZONE_LABEL: zone}
    spec["template"]["spec"].pop("topologySpreadConstraints")
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": f"web-{zone}", "namespace": NS},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}}
    return [deployment, service]


def client_pod(node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"client-{node}", "namespace": NS, "labels": {"app": "client"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [{
                         "name": "client", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                         "command": ["/bin/busybox", "sleep", "100000"],
                         "securityContext": workload.RESTRICTED_SECURITY}]}}


def in_pod(lab: Lab, pod: str, script: str, check: bool = True) -> str:
    done = kubectl(lab, "cp-b", f"exec -n {NS} {pod} -- /bin/busybox sh -c "
                                f"{shlex.quote(script)}", check=check)
    return done.stdout


def running(lab: Lab, selector: str) -> list[dict[str, Any]]:
    return [p for p in get_json(lab, f"pods -n {NS} -l {selector}")["items"] if pod_ready(p)]


@pytest.fixture(scope="module")
def web(wlab: Lab) -> dict[str, list[dict[str, Any]]]:
    """zone -> its running web pods; a client pod on every node."""
    objects = [o for zone in ZONES for o in zone_web(zone)]
    kubectl_apply(wlab, *objects, *(client_pod(n) for n in all_nodes(wlab)))
    until(lambda: len(running(wlab, "app=web")) == 6
          and len(running(wlab, "app=client")) == len(all_nodes(wlab)),
          120, "six web pods and a client on every node")
    zones = zone_of_node(wlab)
    found: dict[str, list[dict[str, Any]]] = {z: [] for z in ZONES}
    for pod in running(wlab, "app=web"):
        found[zones[pod["spec"]["nodeName"]]].append(pod)
    return found


SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def probe_pod(node: str, script: str) -> dict[str, Any]:
    """A one-shot pod on `node` whose findings come back as its termination message: read
    from the Pod's status, so no stream to the node is needed (an auto-scaled node's
    streams are the egress issue's)."""
    pod = client_pod(node)
    pod["metadata"] = {"name": f"probe-{node}", "namespace": NS, "labels": {"app": "probe"}}
    pod["spec"]["restartPolicy"] = "Never"
    pod["spec"]["containers"][0]["command"] = [
        "/bin/busybox", "sh", "-c", f"( {script} ) > /dev/termination-log 2>&1"]
    return pod


def probe_script(lab: Lab, here: str, web: dict[str, list[dict[str, Any]]]) -> str:
    domain = lab.inventory.cluster.dns_domain
    lines = []
    for zone in (z for z in ZONES if z != here):
        ip = web[zone][0]["status"]["podIP"]
        lines += [f'echo "pod.{zone}=$(timeout 10 wget -qO- http://{ip}:8080/node)"',
                  f'echo "svc.{zone}=$(timeout 10 wget -qO- '
                  f'http://web-{zone}.{NS}.svc.{domain}/node)"']
    lines += [f'echo "dns=$(nslookup kubernetes.default.svc.{domain} | '
              "sed -n 's/^Address: *//p' | tail -n1)\"",
              "echo \"who=$(kubectl --server=https://kubernetes.default.svc "
              f"--certificate-authority={SA}/ca.crt --token=$(cat {SA}/token) auth whoami "
              "-o jsonpath='{.status.userInfo.username}')\""]
    return "; ".join(lines)


def test_pods_reach_pods_services_dns_and_the_api_from_every_node(
        wlab: Lab, web: dict[str, list[dict[str, Any]]]) -> None:
    """From a pod on each node, the launched one included: pods in the other zones by pod
    IP, a Service whose pods are all in another zone by its DNS name, the `kubernetes`
    Service's name, and the API through it with the pod's own token and CA."""
    assert_probes_pass(wlab, web)


def test_the_same_with_ssh_tunnel_egress(wlab: Lab, web: dict[str, list[dict[str, Any]]]
                                         ) -> None:
    """The egress mode changes the nodes' firewalls, not what pods reach."""
    apply(wlab, dataclasses.replace(wlab.inventory, cluster=dataclasses.replace(
        wlab.inventory.cluster, egress="ssh-tunnel")))
    try:
        kubectl(wlab, "cp-b", f"delete pods -n {NS} -l app=probe --wait=true")
        assert_probes_pass(wlab, web)
    finally:
        # Back to Konnectivity (the switch itself is the egress tests' subject), then
        # converged: that apply's plan is held to it.
        execute(wlab.inventory, wlab.dir / "pki", dry_run=False)
    assert not apply(wlab).changed


def assert_probes_pass(wlab: Lab, web: dict[str, list[dict[str, Any]]]) -> None:
    zones = zone_of_node(wlab)
    nodes = all_nodes(wlab)
    kubectl_apply(wlab, *(probe_pod(n, probe_script(wlab, zones[n], web)) for n in nodes))

    def finished() -> dict[str, str] | None:
        found = {}
        for pod in get_json(wlab, f"pods -n {NS} -l app=probe")["items"]:
            state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
            if "terminated" not in state:
                return None
            found[pod["spec"]["nodeName"]] = state["terminated"].get("message", "")
        return found if len(found) == len(nodes) else None

    until(lambda: finished() is not None, 120, "a probe pod finished on every node")
    for node, message in (finished() or {}).items():
        seen = dict(line.split("=", 1) for line in message.splitlines() if "=" in line)
        here = zones[node]
        for zone in (z for z in ZONES if z != here):
            assert seen[f"pod.{zone}"] == web[zone][0]["spec"]["nodeName"], (node, message)
            assert zones.get(seen[f"svc.{zone}"]) == zone, (node, message)
        assert seen["dns"] == wlab.inventory.cluster.kubernetes_service_ip, (node, message)
        assert seen["who"] == f"system:serviceaccount:{NS}:default", (node, message)


def exec_clients(lab: Lab) -> list[str]:
    """Client pods whose node the API server's streams reach today: inventory nodes."""
    return [f"client-{n.name}" for n in lab.inventory.nodes]


def test_pod_source_addresses_cross_nodes_unchanged(
        wlab: Lab, web: dict[str, list[dict[str, Any]]]) -> None:
    """No NAT between pods: a pod in another zone sees the client pod's own address."""
    zones = zone_of_node(wlab)
    inventory_nodes = {n.name for n in wlab.inventory.nodes}
    for client in running(wlab, "app=client"):
        here = zones[client["spec"]["nodeName"]]
        if client["spec"]["nodeName"] not in inventory_nodes:
            continue  # exec reaches inventory nodes only (the egress issue)
        target = next(p for z, pods in web.items() if z != here for p in pods
                      if p["spec"]["nodeName"] in inventory_nodes)
        kubectl(wlab, "cp-b", f"exec -n {NS} {target['metadata']['name']} -- /bin/busybox sh -c "
                + shlex.quote("mkdir -p /tmp/cgi-bin && printf '#!/bin/busybox sh\\necho\\n"
                              "echo $REMOTE_ADDR\\n' > /tmp/cgi-bin/peer && "
                              "chmod 755 /tmp/cgi-bin/peer"))
        seen = in_pod(wlab, client["metadata"]["name"],
                      f"timeout 10 wget -qO- http://{target['status']['podIP']}:8080/cgi-bin/peer")
        peer = seen.strip().removeprefix("[::ffff:").removesuffix("]")  # httpd's IPv6 form
        assert peer == client["status"]["podIP"], (client["spec"]["nodeName"], seen)


def test_dns_and_the_api_survive_a_zone_losing_its_control_plane_and_dns(
        wlab: Lab, web: dict[str, list[dict[str, Any]]]) -> None:
    zones = zone_of_node(wlab)
    domain = wlab.inventory.cluster.dns_domain
    lost = "lab-a"
    for node in (n for n, z in zones.items() if z == lost):
        kubectl(wlab, "cp-b", f"cordon {node}")
    for node in (n for n, z in zones.items() if z == lost):
        kubectl(wlab, "cp-b", "delete pods -n kube-system -l k8s-app=kube-dns "
                              f"--field-selector spec.nodeName={node}")
    build.power_off(wlab.dir, "cp-a")
    try:
        survivors = [n.name for n in wlab.inventory.nodes if zones[n.name] != lost]
        sa = SA

        def served() -> bool:
            for node in survivors:
                out = in_pod(wlab, f"client-{node}",
                             f"nslookup web-lab-b.{NS}.svc.{domain} >/dev/null && "
                             "kubectl --request-timeout=3s "
                             "--server=https://kubernetes.default.svc "
                             f"--certificate-authority={sa}/ca.crt --token=$(cat {sa}/token) "
                             "auth whoami >/dev/null && echo ok", check=False)
                if out.strip() != "ok":
                    return False
            return True

        # Until the dead API server's lease runs out (the endpoint reconciler's TTL), a
        # connection to the `kubernetes` Service may land on it; then every one answers.
        dead = wlab.inventory.host("cp-a").address

        def dropped() -> bool:
            subsets = get_json(wlab, "endpoints kubernetes").get("subsets") or [{}]
            return dead not in [a["ip"] for a in subsets[0].get("addresses", [])]

        gone = until(dropped, 60, "the lost API server out of the `kubernetes` Service")
        took = gone + until(lambda: all(served() for _ in range(3)), 60,
                            "names resolve and the API answers from the other zones, each time")
        print(f"\nzone {lost} lost: its API server out of the Service after {gone:.1f} s, "
              f"names and the API served from the other zones after {took:.1f} s")
    finally:
        build.power_on(wlab.dir, "cp-a")
        for node in (n for n, z in zones.items() if z == lost):
            kubectl(wlab, "cp-b", f"uncordon {node}")
    apply(wlab)


def test_a_claim_on_a_zones_class_lands_its_pod_in_that_zone(wlab: Lab) -> None:
    zone = "lab-c"
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "data", "namespace": NS},
             "spec": {"storageClassName": f"ebs-gp3-{zone}", "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "100Mi"}}}}
    pod = client_pod("x")
    pod["metadata"]["name"] = "with-data"
    del pod["spec"]["nodeName"]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    pod["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    pod["spec"]["securityContext"] = {"fsGroup": 65534}
    kubectl_apply(wlab, claim, pod)
    until(lambda: pod_ready(get_json(wlab, f"pod with-data -n {NS}")), 90, "pod with a volume")
    placed = get_json(wlab, f"pod with-data -n {NS}")["spec"]["nodeName"]
    assert zone_of_node(wlab)[placed] == zone
    bound = get_json(wlab, f"pvc data -n {NS}")
    assert bound["status"]["phase"] == "Bound"
    volume = get_json(wlab, f"pv {bound['spec']['volumeName']}")
    assert volume["metadata"]["labels"][kc.ZONE_LABEL] == zone


def test_the_aws_storage_driver_is_accepted_by_a_real_api_server(wlab: Lab) -> None:
    c = wlab.inventory.cluster
    ctx = AddonContext(
        cluster_name=c.name, kubernetes_version=c.kubernetes_version, zones=ZONES,
        zone_endpoints={z.name: z.endpoint.url for z in wlab.inventory.zones},
        regional_endpoint=wlab.inventory.regional_endpoint.url, service_cidr=c.service_cidr,
        pod_cidr=c.pod_cidr, dns_address=c.dns_address, dns_domain=c.dns_domain,
        node_count=3, lab=False,
        images={n: images.image_for(n, "1.36.0") for n in ebs_csi.IMAGES})
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": ebs_csi.manifests(ctx)})
    done = kubectl(wlab, "cp-b", "apply --dry-run=server --server-side "
                                 "--field-manager=multizone-k8s -f -", stdin=body.encode())
    assert "serverside-applied (server dry run)" in done.stdout, done.stdout


def test_coredns_follows_nodes_that_come_without_an_apply(wlab: Lab) -> None:
    """One replica a node (cluster.dns.nodes_per_replica 1): the apply sizes CoreDNS for
    the nodes there are; a node launched afterwards gets its replica from the control
    plane's autoscaler, with no apply."""
    dense = dataclasses.replace(wlab.inventory, cluster=dataclasses.replace(
        wlab.inventory.cluster, dns=DnsRule(nodes_per_replica=1)))
    apply(wlab, dense)
    nodes = len(get_json(wlab, "nodes")["items"])

    def replicas() -> int:
        return int(get_json(wlab, "deployment coredns -n kube-system")["spec"]["replicas"])

    assert replicas() == nodes
    node = launch.launch(wlab.dir, "lab-c")
    LAUNCHED["second"] = node
    took = until(lambda: replicas() == nodes + 1, 120, "a replica more for the new node")
    print(f"\nCoreDNS scaled to {nodes + 1} replicas {took:.1f} s after the launch returned")
    apply(wlab)  # back to the default rule: the apply and the autoscaler agree again
    assert replicas() == 3


def test_a_second_apply_changes_nothing(wlab: Lab) -> None:
    report = apply(wlab)
    assert not report.changed, report.lines()
    pods = kube_system_pods(wlab)
    restarts = {p["metadata"]["name"]: c["restartCount"] for p in pods
                for c in p["status"].get("containerStatuses", []) if c["restartCount"]}
    assert restarts == {}, restarts
    for node in wlab.inventory.nodes:  # the pod network agent never fell over
        log = in_host(wlab, node.name, ["cat", "/var/lib/mzk/log/mzk-pod-network.log"])
        assert "Traceback" not in log.stdout, (node.name, log.stdout[-3000:])
