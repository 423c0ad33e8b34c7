"""The control plane's pure parts: configuration, command lines, plan decisions, parsers,
the local binaries check and the encryption key. The real thing runs in tests/lab."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bootstrap import k8s_bin
from bootstrap.control_plane import config, encryption, health
from bootstrap.errors import ConfigError
from bootstrap.inventory import parse
from bootstrap.pki.table import flags_for
from bootstrap.services import ServiceStatus, inputs_digest, parse_status
from bootstrap.steps import cluster_objects, control_plane
from bootstrap.steps.etcd import etcd_servers, etcd_servers_overrides

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"


def inventory(**cluster):  # type: ignore[no-untyped-def]
    data = yaml.safe_load(EXAMPLE.read_text())
    data["cluster"].update(cluster)
    return parse(data)


def apiserver(inv=None):  # type: ignore[no-untyped-def]
    inv = inv or inventory()
    host = inv.host("cp-a")
    return config.apiserver_command(inv, host, "/k/kube-apiserver", etcd_servers(inv),
                                    etcd_servers_overrides(inv))


def flags(command: list[str]) -> dict[str, str]:
    return dict(w.partition("=")[::2] for w in command[1:])


def test_api_server_carries_every_certificate_flag_of_the_table() -> None:
    got = flags(apiserver())
    for flag, path in flags_for("kube-apiserver").items():
        assert got[flag] == path
    assert got["--kubelet-certificate-authority"] == "/etc/kubernetes/pki/ca.crt"
    assert got["--authorization-mode"] == "Node,RBAC"
    assert got["--enable-admission-plugins"] == "NodeRestriction,PodSecurity"
    assert got["--bind-address"] == "10.0.16.10" and got["--secure-port"] == "6443"
    assert got["--service-account-issuer"] == "https://api.mz-example.internal:6443"
    assert got["--etcd-servers-overrides"].startswith("/events#https://10.0.16.10:2382;")
    assert got["--profiling"] == "false"
    assert "--anonymous-auth" not in got  # the authentication configuration decides


def test_controller_manager_and_scheduler_listen_on_loopback_only() -> None:
    inv = inventory()
    cm = flags(config.controller_manager_command(inv, "/k/kcm"))
    sched = flags(config.scheduler_command("/k/ks"))
    for got in (cm, sched):
        assert got["--bind-address"] == "127.0.0.1"
        assert got["--leader-elect"] == "true"
        assert got["--profiling"] == "false"
    assert cm["--use-service-account-credentials"] == "true"
    assert cm["--cluster-signing-key-file"] == "/etc/kubernetes/pki/ca.key"


def test_without_ca_keys_on_hosts_the_controller_manager_signs_nothing() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["pki"]["ca_keys_on_hosts"] = False
    cm = flags(config.controller_manager_command(parse(data), "/k/kcm"))
    assert "--cluster-signing-key-file" not in cm
    assert "--cluster-signing-cert-file" not in cm


def test_anonymous_is_allowed_only_on_health_paths() -> None:
    doc = yaml.safe_load(config.authentication_config())
    assert doc["kind"] == "AuthenticationConfiguration"
    assert doc["anonymous"]["enabled"] is True
    assert [c["path"] for c in doc["anonymous"]["conditions"]] == ["/livez", "/readyz",
                                                                  "/healthz"]


def test_joining_nodes_are_authenticated_by_the_identity_webhook_never_a_bootstrap_token(
) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    without = parse(data)
    with_pools = parse({**data, "node_pools": [{"name": "pool-a", "zone": "eu-west-1a"}]})
    got = flags(apiserver(with_pools))
    assert got["--authentication-token-webhook-config-file"] == \
        "/etc/kubernetes/mzk-identity-webhook.conf" == config.IDENTITY_WEBHOOK_CONF
    assert got["--authentication-token-webhook-version"] == "v1"
    assert got["--authentication-token-webhook-cache-ttl"] == "30s"
    placed = {f.path: f for f in config.files(with_pools, b"")}
    webhook = yaml.safe_load(placed[config.IDENTITY_WEBHOOK_CONF].content)
    (cluster,) = webhook["clusters"]
    assert cluster["cluster"] == {"server": "http://127.0.0.1:10262/authenticate"}
    assert placed[config.IDENTITY_WEBHOOK_CONF].mode == 0o644  # no credential in it
    # No node pools: no approver to ask, so no webhook; and never bootstrap tokens.
    assert not [f for f in flags(apiserver(without)) if "token-webhook" in f]
    assert config.IDENTITY_WEBHOOK_CONF not in {f.path for f in config.files(without, b"")}
    for inv in (with_pools, without):
        assert "--enable-bootstrap-token-auth" not in flags(apiserver(inv))


def test_pod_security_defaults_are_pinned_to_the_cluster_minor() -> None:
    doc = yaml.safe_load(config.admission_config("1.36.2"))
    defaults = doc["plugins"][0]["configuration"]["defaults"]
    assert defaults == {"enforce": "baseline", "enforce-version": "v1.36",
                        "audit": "restricted", "audit-version": "v1.36",
                        "warn": "restricted", "warn-version": "v1.36"}


def test_audit_policy_never_records_secret_bodies() -> None:
    rules = yaml.safe_load(config.AUDIT_POLICY_TEXT)["rules"]
    secret_rule = next(r for r in rules if any(
        "secrets" in g.get("resources", []) for g in r.get("resources", [])))
    assert secret_rule["level"] == "Metadata"
    # The first rule that matches wins: no earlier rule may log Secrets at Request level.
    assert all(r.get("resources") or r["level"] in ("None", "Metadata")
               for r in rules[:rules.index(secret_rule)] if r.get("level") != "None")


@pytest.mark.parametrize(("nodes", "expected"), [(1, (400, 200)), (500, (400, 200)),
                                                 (1000, (600, 200)), (3000, (1800, 600)),
                                                 (5000, (3000, 1000))])
def test_inflight_limits_follow_the_declared_scale(nodes: int, expected: tuple) -> None:
    assert config.inflight_limits(nodes) == expected
    got = flags(apiserver(inventory(max_nodes=nodes)))
    assert (int(got["--max-requests-inflight"]),
            int(got["--max-mutating-requests-inflight"])) == expected


def test_max_nodes_defaults_to_the_inventory_nodes() -> None:
    assert inventory().cluster.max_nodes == 3
    with pytest.raises(ConfigError, match="cluster.max_nodes"):
        inventory(max_nodes=5001)


def test_the_input_digest_changes_with_a_named_file_only() -> None:
    command = ["/k/kube-apiserver", "--tls-cert-file=/p/a.crt", "--etcd-servers=x#/p/b.crt"]
    base = {"/p/a.crt": b"one", "/p/b.crt": b"two", "/p/unused": b"x"}
    digest = inputs_digest("sha256:1", command, base)
    assert digest == inputs_digest("sha256:1", command,
                                                  {**base, "/p/unused": b"changed"})
    assert digest != inputs_digest("sha256:1", command,
                                                  {**base, "/p/a.crt": b"renewed"})
    assert digest != inputs_digest("sha256:2", command, base)


def test_flag_changes_name_old_and_new_values() -> None:
    got = control_plane.flag_changes(["/a/b", "--x=1", "--y=2"], ["/a/b", "--x=3", "--z=4"])
    assert got == ["--x=1 -> 3", "+--z=4", "-(--y=2)"]
    assert control_plane.flag_changes(["/a/b", "--x=1"], ["/a/b", "--x=1"]) == []


def test_service_status_parser_reads_both_keepers() -> None:
    text = ("service kube-apiserver lab supervisor 10 main 11 loaded abc\n"
            "service kube-scheduler lab supervisor - main - loaded -\n"
            "service etcd systemd def\nservice etcd-events systemd -\n")
    found = parse_status(text)
    assert found["kube-apiserver"] == ServiceStatus(True, "abc")
    assert not found["kube-scheduler"].running
    assert found["etcd"] == ServiceStatus(True, "def")
    assert not found["etcd-events"].running
    assert not ServiceStatus(True, "abc").current(b"other unit")


def _namespace(name: str, labels: dict[str, str] | None = None, notes=None):  # type: ignore[no-untyped-def]
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": notes or {}}}


def test_cluster_objects_apply_only_what_differs_and_validate() -> None:
    state = {"namespaces": [_namespace("default"), _namespace("kube-system")], "binding": None}
    objects, lines, _ = cluster_objects.differing(state, "1.36.2")
    assert [o["kind"] for o in objects] == ["Namespace", "Namespace", "ClusterRoleBinding"]
    assert len(lines) == 3
    for obj in objects:
        full = dict(obj)
        if full["kind"] == "Namespace":
            full = {**full, "spec": {}}
        kubernetes_validate.validate(full, "1.33", strict=True)
    system = next(o for o in objects if o["metadata"]["name"] == "kube-system")
    assert system["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert cluster_objects.REASON_KEY in system["metadata"]["annotations"]
    converged = {"namespaces": [_namespace(o["metadata"]["name"], o["metadata"]["labels"],
                                           o["metadata"].get("annotations"))
                                for o in objects if o["kind"] == "Namespace"],
                 "binding": cluster_objects.binding_object()}
    assert cluster_objects.differing(converged, "1.36.2") == ([], [], [])
    # A newer minor changes the pinned versions: the labels are applied again.
    assert len(cluster_objects.differing(converged, "1.37.0")[0]) == 2


def test_storage_classes_are_created_then_left_alone_and_replaced_when_immutable_differ(
        ) -> None:
    zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    base = {"namespaces": [], "binding": cluster_objects.binding_object()}
    objects, lines, replace = cluster_objects.differing(base, "1.36.2", zones)
    assert lines == ["create storage class ebs-gp3", *(f"create storage class ebs-gp3-{z}"
                                                       for z in zones)]
    assert not replace
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    # What the API server returns carries more than we set; that is no difference.
    served = {o["metadata"]["name"]: {**o, "metadata": {
        **o["metadata"], "uid": "u", "resourceVersion": "7",
        "annotations": {**o["metadata"].get("annotations", {}), "other": "x"}}}
        for o in objects}
    converged = {**base, "storage_classes": served}
    assert cluster_objects.differing(converged, "1.36.2", zones) == ([], [], [])
    # A parameter cannot change in place: delete, then create.
    changed = {**served, "ebs-gp3-eu-west-1b": {**served["ebs-gp3-eu-west-1b"],
                                                "parameters": {"type": "gp2"}}}
    _, lines, replace = cluster_objects.differing({**base, "storage_classes": changed},
                                                  "1.36.2", zones)
    assert lines == ["replace storage class ebs-gp3-eu-west-1b"]
    assert replace == ["ebs-gp3-eu-west-1b"]


def test_probe_parser_tells_no_answer_from_no_binding() -> None:
    assert cluster_objects.parse_probe({"objects": ""}) is None
    ns = {"kind": "Namespace", "metadata": {"name": "default"}}
    other = {"kind": "ClusterRoleBinding", "metadata": {"name": "system:basic-user"}}
    got = cluster_objects.parse_probe({"objects": json.dumps({"items": [ns, other]})})
    assert got == {"namespaces": [ns], "binding": None, "nodes": {},
                   "bindings": {"system:basic-user": other},
                   "storage_classes": {}}
    ours = {"kind": "ClusterRoleBinding", "metadata": {"name": cluster_objects.BINDING}}
    got = cluster_objects.parse_probe({"objects": json.dumps({"items": [ns, other, ours]})})
    assert got is not None and got["binding"] == ours


def test_health_parser_names_what_is_down() -> None:
    text = ("readyz 200\ncontroller-manager 200\nscheduler 000\nendpoint:api-a.x 200\n"
            'version {"serverVersion":{"gitVersion":"v1.36.2"}}\n'
            'leases {"items":[{"metadata":{"name":"kube-scheduler"},'
            '"spec":{"holderIdentity":"cp-a_123"}}]}\n')
    found = health.parse(text, "cp-a")
    assert found.ready and found.version == "v1.36.2"
    assert not found.healthy and "scheduler DOWN" in found.phrase()
    assert "holds scheduler lease" in found.phrase()
    assert health.parse(text, "cp-b").leases["kube-scheduler"] == ""


def test_encryption_key_is_made_once_private_and_parsed(tmp_path: Path) -> None:
    first, made = encryption.ensure(tmp_path)
    assert made
    path = encryption.path_in(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, made_again = encryption.ensure(tmp_path)
    assert again == first and not made_again
    doc = yaml.safe_load(first)
    providers = doc["resources"][0]["providers"]
    assert list(providers[0]) == ["secretbox"] and providers[-1] == {"identity": {}}
    path.write_text("keys: [{name: k, secret: c2hvcnQ=}]\n")
    with pytest.raises(ConfigError, match=r"keys\[0\].secret: expected 32 bytes"):
        encryption.ensure(tmp_path)


def _fake_binary(directory: Path, name: str, version: str) -> None:
    path = directory / name
    answer = f"Client Version: v{version}" if name == "kubectl" else f"Kubernetes v{version}"
    path.write_text(f"#!/bin/sh\necho '{answer}'\n")
    os.chmod(path, 0o755)  # noqa: S103 - an executable stand-in


def test_local_binaries_must_match_the_inventory_minor(tmp_path: Path) -> None:
    for name in (*k8s_bin.CONTROL_PLANE_BINARIES, *k8s_bin.NODE_BINARIES):
        _fake_binary(tmp_path, name, "1.36.2")
    found = k8s_bin.load(tmp_path, "1.36.0")
    assert found.versions["kube-apiserver"] == "1.36.2"
    assert len(set(found.digests.values())) == 2  # kubectl's script differs from the rest
    _fake_binary(tmp_path, "kube-scheduler", "1.35.1")
    with pytest.raises(ConfigError, match=r"kube-scheduler is v1\.35\.1"):
        k8s_bin.load(tmp_path, "1.36.0")
    (tmp_path / "kubectl").unlink()
    with pytest.raises(ConfigError, match="kubectl is missing"):
        k8s_bin.load(tmp_path, "1.36.0")


def test_a_host_plan_from_facts_needs_no_round_trip() -> None:
    from bootstrap.engine import HostContext
    from bootstrap.pki import HostPKI, PKIResult
    from bootstrap.services import render_unit, unit_path
    from tests.unit.fakes import FakeRunner

    inv = inventory()
    host = inv.host("cp-a")
    pki = PKIResult(out_dir=Path("/x"), local=HostPKI("local", ()), warnings=(),
                    hosts={"cp-a": HostPKI("cp-a", ())})
    runner = FakeRunner("cp-a")
    ctx = HostContext(host=host, runner=runner, inventory=inv, dry_run=True,
                      shared={"pki": pki, "encryption": b"key"},
                      facts={"k8s": {n: f"/k/{n}" for n in k8s_bin.CONTROL_PLANE_BINARIES},
                             "k8s_id": dict.fromkeys(k8s_bin.CONTROL_PLANE_BINARIES, "id")})
    wanted = control_plane.services(ctx)
    files = config.files(inv, b"key")
    from bootstrap.hostfiles import FileSpec
    states = {f.path: FileSpec(f.path, f.content, f.mode).state() for f in files}
    states.update({unit_path(s.name): FileSpec(unit_path(s.name), render_unit(s).encode(),
                                               0o644).state() for s in wanted})
    import hashlib
    ctx.facts["file_states"] = states
    ctx.facts["services"] = {s.name: ServiceStatus(True, hashlib.sha256(
        render_unit(s).encode()).hexdigest()) for s in wanted}
    plan = control_plane.plan_host(ctx)
    assert not plan.changed
    assert runner.commands == []  # decided from the facts alone
    ctx.facts["services"]["kube-scheduler"] = ServiceStatus(False, None)
    assert control_plane.plan_host(ctx).restart == {
        "kube-scheduler": "start kube-scheduler (not running)"}
    scaled = dataclasses.replace(ctx, inventory=inventory(max_nodes=3000))
    assert set(control_plane.plan_host(scaled).restart) == set(control_plane.SERVICES)


def test_a_new_etcd_binary_changes_the_members_unit() -> None:
    from bootstrap.services import render_unit
    from bootstrap.steps.etcd import MAIN, service

    inv = inventory()
    host = inv.host("cp-a")
    old = render_unit(service(MAIN, inv, host, "/usr/bin/etcd", {}, "v3.4.23"))
    new = render_unit(service(MAIN, inv, host, "/usr/bin/etcd", {}, "v3.4.30"))
    assert "MZK_BINARY=v3.4.23" in old and old != new
