#!/usr/bin/env python3
"""mzk-csr-approver: approve a kubelet's certificate request only once its identity is verified.

A bootstrap token is shared by every node of a pool, so its holder could ask for any node
name. We approve a kubelet CSR only when an identity source (the lab's instance record or
EC2) lists a running instance of that name in the token's pool and no Node of that name is
registered yet; a serving certificate only for names and addresses that instance owns. The
controller-manager then signs it; its own auto-approver gets no RBAC for these signers.

Shipped to the control-plane hosts with its identity sources (bootstrap.node.instance_identity,
beside it as `instance_identity.py`) and run by their python3 (3.9+): standard library only.
The API server checks a CSR's self-signature on create, so we only read it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import http.client
import ipaddress
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

try:  # in the project
    from bootstrap.node.instance_identity import (
        Identity,
        Instance,
        LookupFailed,
        identity_from,
    )
except ImportError:  # on a host: shipped beside this program
    from instance_identity import (  # type: ignore[no-redef]
        Identity,
        Instance,
        LookupFailed,
        identity_from,
    )

SIGNER_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
SIGNER_SERVING = "kubernetes.io/kubelet-serving"
SIGNERS = (SIGNER_CLIENT, SIGNER_SERVING)
REASON_APPROVED = "MzkIdentityVerified"
REASON_DENIED = "MzkIdentityNotVerified"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
CLIENT_USAGES = {"digital signature", "key encipherment", "client auth"}
SERVING_USAGES = {"digital signature", "key encipherment", "server auth"}
POOL_GROUP = "system:bootstrappers:mzk:"
BOOTSTRAP_USER = re.compile(r"system:bootstrap:[a-z0-9]{6}")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
OID_CN, OID_O = "2.5.4.3", "2.5.4.10"
OID_EXTENSION_REQUEST, OID_SAN = "1.2.840.113549.1.9.14", "2.5.29.17"
OTHER_SAN_KINDS = {0xA0: "otherName", 0x81: "email", 0xA3: "x400Address", 0xA4: "directoryName",
                   0xA5: "ediPartyName", 0x86: "URI", 0x88: "registeredID"}
STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1",
                 0x1E: "utf-16-be", 0x1C: "utf-32-be"}
MAX_BACKOFF = 10.0
CHECKS_TAINT = "node.mzk.io/checks-pending"  # as bootstrap.node.kubelet_config names it
LEASE_PERIOD = 40.0  # a kubelet renews its lease every 10 s; older means stale
CLOCK_SLACK = 2.0


class Denied(Exception):
    """A rule the request breaks; the message becomes the Denied condition's message."""


# ---- the request: a small DER reader for PKCS#10 -------------------------------------------

@dataclass
class CertRequest:
    common_names: list[str] = field(default_factory=list)
    organizations: list[str] = field(default_factory=list)
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(
        default_factory=list)
    other_sans: list[str] = field(default_factory=list)  # kinds we never allow: email, URI...
    key_algorithm: str = ""


def der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Every (tag, contents) element in `data`, which they must fill exactly."""
    items, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER element")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise ValueError("unsupported DER tag")
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or pos + count > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise ValueError("DER element runs past its container")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return items


def _expect(data: bytes, tags: tuple[int, ...], what: str) -> list[tuple[int, bytes]]:
    items = der_items(data)
    if [tag for tag, _ in items[:len(tags)]] != list(tags):
        raise ValueError(f"{what} is not as PKCS#10 describes it")
    return items


def der_oid(contents: bytes) -> str:
    if not contents or contents[-1] & 0x80:
        raise ValueError("bad OBJECT IDENTIFIER")
    arcs, value = [], 0
    for byte in contents:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def _text(tag: int, contents: bytes) -> str:
    if tag not in STRING_CODECS:
        raise ValueError(f"unsupported string type 0x{tag:02x} in the subject")
    return contents.decode(STRING_CODECS[tag])


def parse_csr(der: bytes) -> CertRequest:
    """The parts of a PKCS#10 request the rules look at: subject CN and O, SANs, key type."""
    (_, outer), = _expect(der, (0x30,), "the request")
    info = _expect(_expect(outer, (0x30, 0x30, 0x03), "the request")[0][1],
                   (0x02, 0x30, 0x30), "certificationRequestInfo")
    request = CertRequest()
    for _, rdn in _expect(info[1][1], (), "the subject"):
        for _, pair in der_items(rdn):
            (_, oid), (tag, value) = _expect(pair, (0x06,), "a subject attribute")
            if der_oid(oid) == OID_CN:
                request.common_names.append(_text(tag, value))
            elif der_oid(oid) == OID_O:
                request.organizations.append(_text(tag, value))
    algorithm = _expect(info[2][1], (0x30, 0x03), "subjectPublicKeyInfo")[0][1]
    request.key_algorithm = der_oid(_expect(algorithm, (0x06,), "the key algorithm")[0][1])
    attributes = info[3][1] if len(info) > 3 and info[3][0] == 0xA0 else b""
    for _, attribute in der_items(attributes):
        (_, oid), (_, values) = _expect(attribute, (0x06, 0x31), "an attribute")
        if der_oid(oid) != OID_EXTENSION_REQUEST:
            continue
        for _, extensions in der_items(values):
            for _, extension in der_items(extensions):
                parts = _expect(extension, (0x06,), "an extension")
                if der_oid(parts[0][1]) == OID_SAN and parts[-1][0] == 0x04:
                    (_, names), = _expect(parts[-1][1], (0x30,), "subjectAltName")
                    _add_sans(request, der_items(names))
    return request


def _add_sans(request: CertRequest, names: list[tuple[int, bytes]]) -> None:
    for tag, value in names:
        if tag == 0x82:
            request.dns_names.append(value.decode("ascii"))
        elif tag == 0x87 and len(value) in (4, 16):
            request.ip_addresses.append(ipaddress.ip_address(value))
        elif tag == 0x87:
            raise ValueError(f"an IP address SAN of {len(value)} bytes")
        else:
            request.other_sans.append(OTHER_SAN_KINDS.get(tag, f"0x{tag:02x}"))


def request_der(csr: dict[str, Any]) -> bytes:
    """spec.request is base64 (JSON's []byte) of a PEM CERTIFICATE REQUEST block."""
    pem = base64.b64decode((csr.get("spec") or {}).get("request") or "", validate=True)
    match = re.search(rb"-----BEGIN CERTIFICATE REQUEST-----(.*?)-----END CERTIFICATE REQUEST-----",
                      pem, re.S)
    if not match:
        raise ValueError("no PEM CERTIFICATE REQUEST block")
    return base64.b64decode(b"".join(match.group(1).split()), validate=True)


# ---- identity sources -----------------------------------------------------------------------

def finished(csr: dict[str, Any]) -> str:
    """The terminal condition (Approved, Denied, Failed) a CSR carries, or ""."""
    for condition in (csr.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Approved", "Denied", "Failed"):
            return str(condition["type"])
    return ""


def is_ours(csr: dict[str, Any]) -> bool:
    return (csr.get("spec") or {}).get("signerName") in SIGNERS and not finished(csr)


def decide(csr: dict[str, Any], identity: Identity,
           node_exists: Callable[[str], bool]) -> tuple[str, str]:
    """("approve" | "deny" | "skip", reason). Skip: not ours, already decided, or a lookup
    failed for now (retried on the next pass, never turned into a denial)."""
    spec = csr.get("spec") or {}
    if not is_ours(csr):
        return "skip", f"not a pending kubelet CSR (signer {spec.get('signerName')})"
    try:
        request = parse_csr(request_der(csr))
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        return "deny", f"malformed certificate request: {err}"
    try:
        name = _node_name(request)
        if spec["signerName"] == SIGNER_CLIENT:
            return "approve", _check_client(spec, request, name, identity, node_exists)
        return "approve", _check_serving(spec, request, name, identity)
    except Denied as denial:
        return "deny", str(denial)
    except LookupFailed as err:
        return "skip", f"identity not checked yet: {err}"


def _node_name(request: CertRequest) -> str:
    if len(request.common_names) != 1 or not request.common_names[0].startswith("system:node:"):
        raise Denied(f"subject CN must be one system:node:<name>, got {request.common_names}")
    name = request.common_names[0][len("system:node:"):]
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        raise Denied(f"node name {name!r} is not a DNS-1123 subdomain")
    if request.organizations != ["system:nodes"]:
        raise Denied(f"subject O must be exactly ['system:nodes'], got {request.organizations}")
    if request.other_sans:
        raise Denied(f"SANs of kind {', '.join(sorted(set(request.other_sans)))} are not allowed")
    return name


def _check_usages(spec: dict[str, Any], allowed: set[str], required: str) -> None:
    usages = spec.get("usages") or []
    extra = sorted(set(usages) - allowed)
    if extra or required not in usages:
        raise Denied(f"usages {usages} must include {required!r} and only {sorted(allowed)}")


def _running(identity: Identity, name: str) -> Instance:
    instance = identity.lookup(name)
    if instance is None:
        raise Denied(f"no instance named {name} in the identity record")
    if instance.state != "running":
        raise Denied(f"instance {name} is {instance.state}, not running")
    return instance


def _check_client(spec: dict[str, Any], request: CertRequest, name: str, identity: Identity,
                  node_exists: Callable[[str], bool]) -> str:
    _check_usages(spec, CLIENT_USAGES, "client auth")
    if request.dns_names or request.ip_addresses:
        raise Denied("a kubelet client certificate must carry no SANs")
    user, groups = spec.get("username", ""), spec.get("groups") or []
    if user == f"system:node:{name}":
        if "system:nodes" not in groups:
            raise Denied(f"requester {user} is not in group system:nodes")
        _running(identity, name)
        return f"node {name} renews its own client certificate and is a running instance"
    if not BOOTSTRAP_USER.fullmatch(user):
        raise Denied(f"requester {user!r} is neither node {name} nor a bootstrap token")
    pools = [group[len(POOL_GROUP):] for group in groups if group.startswith(POOL_GROUP)]
    if len(pools) != 1:
        raise Denied(f"bootstrap token {user} must be in exactly one group {POOL_GROUP}<pool>")
    instance = _running(identity, name)
    if instance.pool != pools[0]:
        raise Denied(f"instance {name} is in pool {instance.pool!r}, "
                     f"the token is for pool {pools[0]!r}")
    if node_exists(name):
        raise Denied(f"a node named {name} is already registered")
    return f"instance {name} runs in pool {pools[0]} and no node of that name is registered"


def _check_serving(spec: dict[str, Any], request: CertRequest, name: str,
                   identity: Identity) -> str:
    _check_usages(spec, SERVING_USAGES, "server auth")
    user, groups = spec.get("username", ""), spec.get("groups") or []
    if user != f"system:node:{name}" or "system:nodes" not in groups:
        raise Denied(f"requester {user!r} is not node {name} in group system:nodes")
    if not request.dns_names and not request.ip_addresses:
        raise Denied("a kubelet serving certificate needs at least one DNS or IP SAN")
    instance = _running(identity, name)
    names = {n.lower() for n in (instance.name, *instance.dns_names)}
    addresses = {ipaddress.ip_address(a) for a in instance.addresses}
    foreign = [d for d in request.dns_names if d.lower() not in names]
    foreign += [str(ip) for ip in request.ip_addresses if ip not in addresses]
    if foreign:
        raise Denied(f"SANs {foreign} do not belong to instance {name} "
                     f"(names {sorted(names)}, addresses {list(instance.addresses)})")
    return f"node {name} is a running instance owning every SAN it asks for"


# ---- the API server and the loop -----------------------------------------------------------

def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


class KubeApi:
    """One keep-alive HTTPS connection to the API server, authenticated by client cert."""

    def __init__(self, server: str, ca: str, cert: str, key: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"--server {server!r} must be an https:// URL")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 443, timeout
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)
        self.connection: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for attempt in (1, 2):  # a kept-alive connection the server closed gets one retry
            reused = self.connection is not None
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=self.timeout)
            try:
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2 or not reused:
                    raise
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def node_exists(self, name: str) -> bool:
        """Only a 404 means "no such node": any other answer counts as registered (fail
        closed), except 429/5xx and transport errors, which are retried."""
        try:
            status, _ = self.request("GET", "/api/v1/nodes/" + urllib.parse.quote(name, safe=""))
        except (OSError, http.client.HTTPException) as err:
            raise LookupFailed(f"GET node {name}: {err!r}") from err
        if status == 429 or status >= 500:
            raise LookupFailed(f"GET node {name}: HTTP {status}")
        return status != 404


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
        pending = [csr for csr in listing.get("items") or [] if is_ours(csr)]
        names = {csr["metadata"]["name"] for csr in pending}
        self.waiting = {k: v for k, v in self.waiting.items() if k in names}
        for csr in pending:
            try:
                self._handle(csr)
            except Exception as err:  # one odd CSR must not stop the others
                self.error(f"csr={csr['metadata']['name']} error={err!r}")
        self.counts["passes"] += 1

    def _handle(self, csr: dict[str, Any]) -> None:
        name = csr["metadata"]["name"]
        decision, reason = decide(csr, self.identity, self.api.node_exists)
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
        names = parse_csr(request_der(csr)).common_names
    except (ValueError, binascii.Error, UnicodeDecodeError):
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
    args = parser.parse_args(argv)
    try:
        approver = Approver(KubeApi(args.server, args.ca, args.cert, args.key),
                            identity_from(args.identity), args.status)
    except (ValueError, OSError, ssl.SSLError) as err:
        print(f"mzk-csr-approver: {err}", file=sys.stderr)
        return 2
    backoff = 0.0
    while True:  # ended by SIGTERM (systemd) or --once
        try:
            approver.run_pass()
            backoff = 0.0
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
