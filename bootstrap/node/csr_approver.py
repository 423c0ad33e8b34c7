#!/usr/bin/env python3
"""mzk-csr-approver: approve a kubelet's certificate request only for the instance that asks.

A joining node's only bootstrap credential is its cloud-signed instance identity, which the
API server checks through our token webhook (bootstrap.node.identity_webhook, served by this
process on loopback with `--webhook-listen`); its certificate request then names the
instance, `mzk:instance:<id>`, and bootstrap.node.csr_rules approves a client certificate
only for that instance's own name, one at a time, and a serving certificate only for names
and addresses the instance owns. The controller-manager then signs it; its own
auto-approver gets no RBAC for these signers. Joined nodes are admitted (their conformance
taint lifted) once they pass the checks seen from the control plane.

Shipped to the control-plane hosts with its companions (COMPANIONS, each beside it as
`<name>.py`) and run by their python3 (3.9+): standard library only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

try:  # in the project
    from bootstrap.node.asn1_der import DECODE_ERRORS, parse_csr, request_der
    from bootstrap.node.csr_rules import (
        DNS_SUBDOMAIN,
        SIGNER_CLIENT,
        SIGNER_SERVING,
        SIGNERS,
        Held,
        created_order,
        decide,
        held_from,
        is_ours,
        joining_instance,
    )
    from bootstrap.node.dns_autoscaler import DnsAutoscaler, DnsRule
    from bootstrap.node.identity_webhook import Verifier, parse_listen, serve
    from bootstrap.node.instance_identity import (
        Identity,
        Instance,
        LookupFailed,
        identity_from,
        load_trust_file,
    )
    from bootstrap.node.kube_api import KubeApi as _KubeApi
except ImportError:  # on a host: shipped beside this program
    from asn1_der import DECODE_ERRORS, parse_csr, request_der  # type: ignore[no-redef]
    from csr_rules import (  # type: ignore[no-redef]
        DNS_SUBDOMAIN,
        SIGNER_CLIENT,
        SIGNER_SERVING,
        SIGNERS,
        Held,
        created_order,
        decide,
        held_from,
        is_ours,
        joining_instance,
    )
    from dns_autoscaler import DnsAutoscaler, DnsRule  # type: ignore[no-redef]
    from identity_webhook import Verifier, parse_listen, serve  # type: ignore[no-redef]
    from instance_identity import (  # type: ignore[no-redef]
        Identity,
        Instance,
        LookupFailed,
        identity_from,
        load_trust_file,
    )
    from kube_api import KubeApi as _KubeApi  # type: ignore[no-redef]

# The modules shipped beside this program (bootstrap/node/<name>.py as <name>.py).
COMPANIONS = ("asn1_der", "instance_identity", "identity_webhook", "csr_rules", "kube_api",
              "dns_autoscaler")
__all__ = ["DNS_SUBDOMAIN", "SIGNER_CLIENT", "SIGNER_SERVING", "decide", "COMPANIONS"]
REASON_APPROVED = "MzkIdentityVerified"
REASON_DENIED = "MzkIdentityNotVerified"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
MAX_BACKOFF = 10.0
CHECKS_TAINT = "node.mzk.io/checks-pending"  # as bootstrap.node.kubelet_config names it
LEASE_PERIOD = 40.0  # a kubelet renews its lease every 10 s; older means stale
CLOCK_SLACK = 2.0
APPROVED_UNISSUED = 3600.0  # an approval not yet seen issued is held this long at least


# ---- the API server and the loop -----------------------------------------------------------

def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


class KubeApi(_KubeApi):
    """The approver's API client: a node it cannot look up now raises LookupFailed, on which
    the rules and the webhook wait (never deny)."""

    unavailable = LookupFailed


@dataclass
class Approver:
    api: KubeApi
    identity: Identity
    status_path: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("approved", "denied", "conflicts", "errors", "passes"), 0))
    recent: list[dict[str, str]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # CSR -> why it waits, logged once
    last_error: str = ""
    # Joining instances' approved client certificates this process has seen, kept after the
    # API garbage-collects their CSRs (an hour after issue): csr -> (id, name, until).
    remembered: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    def run_pass(self) -> None:
        """One look at every CSR: decide each pending kubelet CSR and write the decision;
        then admit joined nodes that pass their checks."""
        self.decide_requests()
        self.admit_nodes()

    def admit_nodes(self) -> None:
        """Lift the conformance taint of joined nodes (instances of a pool, not inventory
        nodes, whose taint `apply` lifts) once `node_problems` finds nothing."""
        status, listing = self.api.request("GET", "/api/v1/nodes")
        if status != 200 or not isinstance(listing, dict):
            raise RuntimeError(f"GET nodes: HTTP {status}")
        for node in listing.get("items") or []:
            taints = node.get("spec", {}).get("taints") or []
            name = node["metadata"]["name"]
            if not any(t.get("key") == CHECKS_TAINT for t in taints):
                continue
            instance = self.identity.lookup(name)
            if instance is None:
                continue  # an inventory node, or not yet known: not ours to admit
            problems = node_problems(node, instance, self._lease_renewed(name), time.time())
            if problems:
                if self.waiting.get("node/" + name) != problems:
                    self.waiting["node/" + name] = problems
                    print(f"node={name} waiting: {problems}", file=sys.stderr, flush=True)
                continue
            kept = [t for t in taints if t.get("key") != CHECKS_TAINT]
            patch = [{"op": "test", "path": "/metadata/resourceVersion",
                      "value": node["metadata"]["resourceVersion"]},
                     {"op": "replace", "path": "/spec/taints", "value": kept}]
            status, _ = self.api.request("PATCH", "/api/v1/nodes/" + name, patch,
                                         "application/json-patch+json")
            if status in (409, 422):  # changed meanwhile: next pass
                continue
            if status != 200:
                raise RuntimeError(f"PATCH node {name}: HTTP {status}")
            self.waiting.pop("node/" + name, None)
            print(f"node={name} decision=admitted reason=\"node checks passed\"", flush=True)

    def _lease_renewed(self, name: str) -> float | None:
        status, lease = self.api.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
        if status != 200 or not isinstance(lease, dict):
            return None
        return parse_time(lease.get("spec", {}).get("renewTime"))

    def decide_requests(self) -> None:
        status, listing = self.api.request("GET", CSR_PATH)
        if status != 200 or not isinstance(listing, dict):
            raise RuntimeError(f"GET {CSR_PATH}: HTTP {status}")
        items = listing.get("items") or []
        now = time.time()
        held = self._held(items, now)
        pending = sorted((csr for csr in items if is_ours(csr)), key=created_order)
        names = {csr["metadata"]["name"] for csr in pending}
        self.waiting = {k: v for k, v in self.waiting.items() if k in names}
        try:  # one batched look-up for every joining instance that asks
            self.identity.prefetch({joining_instance(csr)[0] for csr in pending} - {""})
        except LookupFailed as err:
            self.error(f"prefetch: {err}")  # each request then waits on its own look-up
        for csr in pending:
            try:
                self._handle(csr, held, now)
            except Exception as err:  # one odd CSR must not stop the others
                self.error(f"csr={csr['metadata']['name']} error={err!r}")
        self.counts["passes"] += 1

    def _held(self, items: list[dict[str, Any]], now: float) -> Held:
        """What the CSR list says is held, plus approvals remembered past their CSR."""
        held = held_from(items, now)
        for csr, (instance_id, name, state, until) in held.entries.items():
            if state == "approved":
                self.remembered[csr] = (instance_id, name, until)
        self.remembered = {k: v for k, v in self.remembered.items() if v[2] > now}
        for csr, (instance_id, name, until) in self.remembered.items():
            if csr not in held.entries:
                held.add(csr, instance_id, name, "approved", until)
        return held

    def _handle(self, csr: dict[str, Any], held: Held, now: float) -> None:
        name = csr["metadata"]["name"]
        decision, reason = decide(csr, self.identity, self.api.node_exists, held)
        if decision == "skip":
            if self.waiting.get(name) != reason:
                self.waiting[name] = reason
                print(f"csr={name} waiting: {reason}", file=sys.stderr, flush=True)
            return
        body = copy.deepcopy(csr)
        body.update(apiVersion="certificates.k8s.io/v1", kind="CertificateSigningRequest")
        body["status"] = dict(body.get("status") or {})
        body["status"]["conditions"] = list(body["status"].get("conditions") or []) + [{
            "type": "Approved" if decision == "approve" else "Denied", "status": "True",
            "reason": REASON_APPROVED if decision == "approve" else REASON_DENIED,
            "message": reason, "lastUpdateTime": now_rfc3339()}]
        path = f"{CSR_PATH}/{urllib.parse.quote(name, safe='')}/approval"
        status, _ = self.api.request("PUT", path, body)
        if status == 409:  # another approver or the kubelet changed it: look again next pass
            self.counts["conflicts"] += 1
            return
        if status != 200:
            raise RuntimeError(f"PUT approval: HTTP {status}")
        instance_id, node = joining_instance(csr)
        if decision == "approve" and instance_id:  # held from now on, in this pass too
            held.add(name, instance_id, node, "approved", now + APPROVED_UNISSUED)
            self.remembered[name] = (instance_id, node, now + APPROVED_UNISSUED)
        entry = {"csr": name, "decision": {"approve": "approved", "deny": "denied"}[decision],
                 "node": _requested_node(csr), "signer": csr["spec"]["signerName"],
                 "requester": csr["spec"].get("username", ""), "reason": reason}
        self.counts[entry["decision"]] += 1
        self.recent = (self.recent + [{"time": now_rfc3339(), **entry}])[-20:]
        print(" ".join(f"{k}={_quoted(v)}" for k, v in entry.items()), flush=True)

    def error(self, message: str) -> None:
        self.counts["errors"] += 1
        self.last_error = message
        print(message.replace("\n", " "), file=sys.stderr, flush=True)

    def write_status(self) -> None:
        """Atomically, so a reader never sees half a file."""
        if not self.status_path:
            return
        state = {"updated": now_rfc3339(), "counts": self.counts, "last_error": self.last_error,
                 "waiting": self.waiting, "last_decisions": self.recent}
        temporary = f"{self.status_path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.status_path) or ".", exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=1)
            os.replace(temporary, self.status_path)
        except OSError as err:
            self.error(f"status file {self.status_path}: {err!r}")


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time (as the API writes MicroTime and Time) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp.timestamp()


def node_problems(node: dict[str, Any], instance: Instance, lease_renewed: float | None,
                  now: float) -> str:
    """Node checks seen from the control plane, for a node we do not log in to: its kubelet
    Ready (so runtime, kernel values and cgroups as the kubelet needs them), registered with
    its instance's addresses, and its clock within CLOCK_SLACK of ours (the kubelet stamps
    its lease with its own clock every 10 s). Empty: it passes."""
    problems = []
    status = node.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    if not ready or ready[0].get("status") != "True":
        problems.append("kubelet not Ready")
    internal = [a.get("address") for a in status.get("addresses") or []
                if a.get("type") == "InternalIP"]
    if not internal or any(a not in instance.addresses for a in internal):
        problems.append(f"InternalIP {internal} is not the instance's {list(instance.addresses)}")
    if lease_renewed is None:
        problems.append("no lease renewed yet")
    elif not now - LEASE_PERIOD - CLOCK_SLACK <= lease_renewed <= now + CLOCK_SLACK:
        problems.append(f"clock off: lease renewed at {lease_renewed - now:+.0f} s from ours")
    return "; ".join(problems)


def _requested_node(csr: dict[str, Any]) -> str:
    try:
        names = parse_csr(request_der(csr["spec"].get("request") or "")).common_names
    except DECODE_ERRORS:
        return ""
    return names[0].removeprefix("system:node:") if names else ""


def _quoted(value: str) -> str:
    return value if re.fullmatch(r"[\w.:/@-]+", value) else json.dumps(value)


def rbac_manifests(user: str) -> list[dict[str, Any]]:
    """The least the approver needs: read CSRs, write their approval, approve for the two
    kubelet signers, read nodes and lift the conformance taint, read node leases."""
    group, name = "rbac.authorization.k8s.io", "mzk:csr-approver"
    certificates = ["certificates.k8s.io"]
    return [
        {"apiVersion": f"{group}/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [
             {"apiGroups": certificates, "resources": ["certificatesigningrequests"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": certificates, "resources": ["certificatesigningrequests/approval"],
              "verbs": ["update"]},
             {"apiGroups": certificates, "resources": ["signers"],
              "resourceNames": list(SIGNERS), "verbs": ["approve"]},
             {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]},
             {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "verbs": ["get"]}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": group, "kind": "User", "name": user}]},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mzk-csr-approver",
                                     description="Approve verified kubelet CSRs.")
    for flag in ("--server", "--ca", "--cert", "--key", "--identity"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    parser.add_argument("--status")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--webhook-listen", metavar="HOST:PORT",
                        help="serve the API server's token webhook here (loopback only)")
    parser.add_argument("--identity-trust", metavar="PATH",
                        help="PEM certificates or public keys whose identity signatures count")
    parser.add_argument("--dns-zones", type=int, metavar="N",
                        help="also keep CoreDNS sized for the nodes (bootstrap.addons.dns_scale)")
    parser.add_argument("--dns-nodes-per-replica", type=int, default=16)
    parser.add_argument("--dns-max-replicas", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        if args.webhook_listen and not args.identity_trust:
            raise ValueError("--webhook-listen needs --identity-trust PATH (the keys that "
                             "sign instance identities)")
        if args.webhook_listen:
            parse_listen(args.webhook_listen)
        identity = identity_from(args.identity)
        approver = Approver(KubeApi(args.server, args.ca, args.cert, args.key), identity,
                            args.status)
        if args.webhook_listen:  # its own connection: the webhook answers from its thread
            webhook_api = KubeApi(args.server, args.ca, args.cert, args.key)
            keys = load_trust_file(args.identity_trust)
            serve(Verifier(keys, identity, webhook_api.node_exists), args.webhook_listen)
        dns = None
        if args.dns_zones is not None:
            rule = DnsRule(args.dns_nodes_per_replica, args.dns_max_replicas)
            problems = rule.validate(args.dns_zones)
            if problems:
                raise ValueError(problems[0])
            dns = DnsAutoscaler(approver.api, rule, args.dns_zones)
    except (ValueError, OSError, ssl.SSLError) as err:
        print(f"mzk-csr-approver: {err}", file=sys.stderr)
        return 2
    backoff = 0.0
    while True:  # ended by SIGTERM (systemd) or --once
        try:
            approver.run_pass()
            backoff = 0.0
            changed = dns.tick(time.monotonic()) if dns is not None else None
            if changed:
                print(f"event=dns-scaled {changed}", file=sys.stderr, flush=True)
        except Exception as err:  # a service: report, back off, carry on
            approver.api.close()
            approver.error(f"pass failed: {err!r}")
            backoff = min(max(2 * backoff, args.interval, 0.5), MAX_BACKOFF)
        approver.write_status()
        if args.once:
            approver.api.close()
            return 1 if backoff else 0
        time.sleep(backoff or args.interval)


if __name__ == "__main__":
    sys.exit(main())
