"""The CSR approver's rules: which kubelet certificate requests are approved, denied, or left
waiting, and why.

A joining node authenticates with its cloud-signed instance identity (the token webhook,
bootstrap.node.identity_webhook), so its request names the machine that asks:
`mzk:instance:<instance-id>`. A client certificate is approved only for that instance's own
name (its private DNS name, never a tag), while it runs in the pool its identity was
authenticated for, before any Node of that name registered, with a key our PKI accepts
(ECDSA P-256/P-384, RSA >= 2048 bits), and only if no other client certificate for that
instance or that name was approved and is unexpired: one name, one instance, one certificate
at a time. A registered node renews its own client certificate; a serving certificate is
only for the node itself, for names and addresses its instance owns. A failed look-up is
never a denial: the request waits for the next pass.

Standard library only: shipped beside the approver (bootstrap.node.csr_approver).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

try:  # in the project
    from bootstrap.node.asn1_der import (
        DECODE_ERRORS,
        CertRequest,
        certificate_not_after,
        parse_csr,
        pem_blocks,
        request_der,
    )
    from bootstrap.node.identity_webhook import EXTRA_INSTANCE_ID, POOL_GROUP, USER_PREFIX
    from bootstrap.node.instance_identity import Identity, Instance, LookupFailed
except ImportError:  # on a host: shipped beside the approver
    from asn1_der import (  # type: ignore[no-redef]
        DECODE_ERRORS,
        CertRequest,
        certificate_not_after,
        parse_csr,
        pem_blocks,
        request_der,
    )
    from identity_webhook import (  # type: ignore[no-redef]
        EXTRA_INSTANCE_ID,
        POOL_GROUP,
        USER_PREFIX,
    )
    from instance_identity import Identity, Instance, LookupFailed  # type: ignore[no-redef]

SIGNER_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
SIGNER_SERVING = "kubernetes.io/kubelet-serving"
SIGNERS = (SIGNER_CLIENT, SIGNER_SERVING)
CLIENT_USAGES = {"digital signature", "key encipherment", "client auth"}
SERVING_USAGES = {"digital signature", "key encipherment", "server auth"}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192
EC_CURVES = ("P-256", "P-384")


class Denied(Exception):
    """A rule the request breaks; the message becomes the Denied condition's message."""


class Waits(LookupFailed):
    """Not decidable yet (an earlier request for the same instance or name is undecided)."""


@dataclass
class Held:
    """Client certificates of joining instances: approved and unexpired, or requested
    earlier and not yet decided; per instance ID and per node name. Rebuilt from the API's
    CSR list every pass (so a restarted approver knows them) plus what this process saw."""

    instances: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (csr, state)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    entries: dict[str, tuple[str, str, str, float]] = field(default_factory=dict)  # csr -> (id,
    # name, state, until: when an approved certificate expires)

    def add(self, csr: str, instance_id: str, name: str, state: str, until: float) -> None:
        self.instances.setdefault(instance_id, (csr, state))
        self.names.setdefault(name, (csr, state))
        if state == "approved":  # an approval outranks an earlier waiting entry
            self.instances[instance_id] = self.names[name] = (csr, state)
        self.entries[csr] = (instance_id, name, state, until)

    def check(self, csr: str, instance_id: str, name: str) -> None:
        for kind, key, table in (("instance", instance_id, self.instances),
                                 ("name", name, self.names)):
            holder, state = table.get(key, (csr, ""))
            if holder == csr:
                continue
            if state == "approved":
                raise Denied(f"a client certificate for {kind} {key} was already approved "
                             f"({holder}) and has not expired")
            raise Waits(f"an earlier request for {kind} {key} ({holder}) is undecided")


def finished(csr: dict[str, Any]) -> str:
    """The terminal condition (Approved, Denied, Failed) a CSR carries, or ""."""
    found = ""
    for condition in (csr.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Denied", "Failed"):
            return str(condition["type"])
        if condition.get("type") == "Approved":
            found = "Approved"
    return found


def is_ours(csr: dict[str, Any]) -> bool:
    return (csr.get("spec") or {}).get("signerName") in SIGNERS and not finished(csr)


def joining_instance(csr: dict[str, Any]) -> tuple[str, str]:
    """(instance ID, requested node name) of a joining instance's client request, or
    ("", "") for any other request."""
    spec = csr.get("spec") or {}
    user = spec.get("username") or ""
    if spec.get("signerName") != SIGNER_CLIENT or not user.startswith(USER_PREFIX):
        return "", ""
    try:
        names = parse_csr(request_der(spec.get("request") or "")).common_names
    except DECODE_ERRORS:
        return "", ""
    name = names[0].removeprefix("system:node:") if len(names) == 1 else ""
    return user[len(USER_PREFIX):], name


def held_from(csrs: Iterable[dict[str, Any]], now: float) -> Held:
    """What the API's CSR list says is held: approved joining requests whose certificate is
    unexpired or not yet issued, then undecided ones, oldest first (every approver sorts
    alike, so two approvers pick the same one)."""
    held = Held()
    undecided = []
    for csr in csrs:
        instance_id, name = joining_instance(csr)
        if not instance_id or not name:
            continue
        state = finished(csr)
        if state == "Approved":
            until = _not_after(csr)
            if until is None or until > now:
                held.add(csr["metadata"]["name"], instance_id, name, "approved",
                         until if until is not None else now + 3600)
        elif not state:
            undecided.append(csr)
    for csr in sorted(undecided, key=created_order):
        instance_id, name = joining_instance(csr)
        held.add(csr["metadata"]["name"], instance_id, name, "waiting", now)
    return held


def created_order(csr: dict[str, Any]) -> tuple[str, str]:
    meta = csr.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _not_after(csr: dict[str, Any]) -> float | None:
    """The issued certificate's end (None: approved, not issued yet)."""
    certificate = (csr.get("status") or {}).get("certificate")
    if not certificate:
        return None
    try:
        blocks = pem_blocks(base64.b64decode(certificate, validate=True))
        return certificate_not_after(blocks[0][1]) if blocks else None
    except DECODE_ERRORS:
        return None


def decide(csr: dict[str, Any], identity: Identity, node_exists: Callable[[str], bool],
           held: Held | None = None) -> tuple[str, str]:
    """("approve" | "deny" | "skip", reason). Skip: not ours, already decided, or not
    decidable now (a lookup failed, an earlier request waits): retried on the next pass,
    never turned into a denial."""
    spec = csr.get("spec") or {}
    if not is_ours(csr):
        return "skip", f"not a pending kubelet CSR (signer {spec.get('signerName')})"
    try:
        request = parse_csr(request_der(spec.get("request") or ""))
    except DECODE_ERRORS as err:
        return "deny", f"malformed certificate request: {err}"
    try:
        name = _node_name(request)
        _check_key(request)
        if spec["signerName"] == SIGNER_CLIENT:
            reason = _check_client(csr, request, name, identity, node_exists, held or Held())
            return "approve", reason
        return "approve", _check_serving(spec, request, name, identity)
    except Denied as denial:
        return "deny", str(denial)
    except Waits as wait:
        return "skip", str(wait)
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


def _check_key(request: CertRequest) -> None:
    """The cluster's PKI rules for a key: ECDSA P-256 or P-384, or RSA of 2048 bits or more."""
    key = request.public_key
    if key.algorithm == "RSA" and RSA_MIN_BITS <= key.bits <= RSA_MAX_BITS:
        return
    if key.algorithm == "EC" and key.curve in EC_CURVES:
        return
    raise Denied(f"a {key.describe()} key: only ECDSA {' or '.join(EC_CURVES)} or RSA of "
                 f"{RSA_MIN_BITS} to {RSA_MAX_BITS} bits")


def _check_usages(spec: dict[str, Any], allowed: set[str], required: str) -> None:
    usages = spec.get("usages") or []
    extra = sorted(set(usages) - allowed)
    if extra or required not in usages:
        raise Denied(f"usages {usages} must include {required!r} and only {sorted(allowed)}")


def _running(instance: Instance | None, what: str) -> Instance:
    if instance is None:
        raise Denied(f"no instance {what} in the identity record")
    if instance.state != "running":
        raise Denied(f"instance {what} is {instance.state}, not running")
    return instance


def _check_client(csr: dict[str, Any], request: CertRequest, name: str, identity: Identity,
                  node_exists: Callable[[str], bool], held: Held) -> str:
    spec = csr["spec"]
    _check_usages(spec, CLIENT_USAGES, "client auth")
    if request.dns_names or request.ip_addresses:
        raise Denied("a kubelet client certificate must carry no SANs")
    user, groups = spec.get("username", ""), spec.get("groups") or []
    if user == f"system:node:{name}":
        if "system:nodes" not in groups:
            raise Denied(f"requester {user} is not in group system:nodes")
        _running(identity.lookup(name), f"named {name}")
        return f"node {name} renews its own client certificate and is a running instance"
    if not user.startswith(USER_PREFIX):
        raise Denied(f"requester {user!r} is neither node {name} nor an instance identity")
    instance_id = user[len(USER_PREFIX):]
    pools = [group[len(POOL_GROUP):] for group in groups if group.startswith(POOL_GROUP)]
    if len(pools) != 1:
        raise Denied(f"requester {user} must be in exactly one group {POOL_GROUP}<pool>")
    extra = (spec.get("extra") or {}).get(EXTRA_INSTANCE_ID)
    if extra is not None and extra != [instance_id]:
        raise Denied(f"requester {user} carries {EXTRA_INSTANCE_ID} {extra}")
    instance = _running(identity.by_id(instance_id), instance_id)
    if instance.pool != pools[0]:
        raise Denied(f"instance {instance_id} is in pool {instance.pool!r}, "
                     f"its identity was authenticated for pool {pools[0]!r}")
    if name != instance.name:
        raise Denied(f"instance {instance_id} is named {instance.name!r} (its private DNS "
                     f"name), not {name!r}")
    held.check(csr["metadata"]["name"], instance_id, name)
    if node_exists(name):
        raise Denied(f"a node named {name} is already registered")
    return f"instance {instance_id} ({name}) runs in pool {pools[0]} and holds no certificate"


def _check_serving(spec: dict[str, Any], request: CertRequest, name: str,
                   identity: Identity) -> str:
    _check_usages(spec, SERVING_USAGES, "server auth")
    user, groups = spec.get("username", ""), spec.get("groups") or []
    if user != f"system:node:{name}" or "system:nodes" not in groups:
        raise Denied(f"requester {user!r} is not node {name} in group system:nodes")
    if not request.dns_names and not request.ip_addresses:
        raise Denied("a kubelet serving certificate needs at least one DNS or IP SAN")
    instance = _running(identity.lookup(name), f"named {name}")
    names = {n.lower() for n in (instance.name, *instance.dns_names)}
    addresses = {ipaddress.ip_address(a) for a in instance.addresses}
    foreign = [d for d in request.dns_names if d.lower() not in names]
    foreign += [str(ip) for ip in request.ip_addresses if ip not in addresses]
    if foreign:
        raise Denied(f"SANs {foreign} do not belong to instance {name} "
                     f"(names {sorted(names)}, addresses {list(instance.addresses)})")
    return f"node {name} is a running instance owning every SAN it asks for"
