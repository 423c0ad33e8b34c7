"""The approval rules (bootstrap.node.csr_rules), each both ways, and the holes they close:
a sibling's name, a second certificate for one instance or one name, a weak key, a name
that is only a tag, a bootstrap token."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from csr_support import (
    ID7,
    ID8,
    ID9,
    ID10,
    ID11,
    NODE7,
    NODE_GROUPS,
    POOL_GROUPS,
    Record,
    instances,
    make_csr,
    registered,
    serving_csr,
)

from bootstrap.node import csr_rules
from bootstrap.node.csr_rules import Held, decide, held_from
from bootstrap.node.instance_identity import Instance, LookupFailed

RECORD = Record(*instances())
NODE8 = "ip-10-213-1-31.lab.internal"
SIBLING = "ip-10-213-1-33.lab.internal"  # ID11's name: running, not registered
RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key refused
RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def as_instance(instance_id: str, **kw: Any) -> dict[str, Any]:
    return make_csr(user=f"mzk:instance:{instance_id}", **kw)


DENIALS = {
    # common
    "cn-not-a-node": (make_csr, {"cn": "node-7"}, "CN must be one system:node:<name>"),
    "name-not-dns-1123": (make_csr, {"cn": "system:node:Node_7"}, "not a DNS-1123 subdomain"),
    "o-masters": (make_csr, {"orgs": ("system:masters",)}, "O must be exactly"),
    "o-extra": (make_csr, {"orgs": ("system:nodes", "system:masters")}, "O must be exactly"),
    "o-missing": (make_csr, {"orgs": ()}, "O must be exactly"),
    "email-san": (serving_csr, {"emails": ("a@b.c",)}, "SANs of kind email"),
    "uri-san": (make_csr, {"uris": ("spiffe://x",)}, "SANs of kind URI"),
    "rsa-1024": (make_csr, {"key": RSA_1024}, "a RSA 1024-bit key: only ECDSA P-256 or P-384"),
    "rsa-1024-serving": (serving_csr, {"key": RSA_1024}, "RSA 1024-bit"),
    "ec-p521": (make_csr, {"key": ec.generate_private_key(ec.SECP521R1())}, "EC P-521 key"),
    "ec-secp256k1": (make_csr, {"key": ec.generate_private_key(ec.SECP256K1())}, "secp256k1"),
    # client, joining
    "client-dns-san": (make_csr, {"dns": (NODE7,)}, "must carry no SANs"),
    "client-server-usage": (make_csr, {"usages": ["digital signature", "client auth",
                                                  "server auth"]}, "usages"),
    "client-no-client-auth": (make_csr, {"usages": ["digital signature"]}, "usages"),
    "sibling-name": (make_csr, {"cn": f"system:node:{SIBLING}"},
                     f"instance {ID7} is named '{NODE7}' (its private DNS name), "
                     f"not '{SIBLING}'"),
    "tag-name": (make_csr, {"cn": "system:node:lab-a-node"}, "its private DNS name"),
    "unknown-instance": (as_instance, {"instance_id": "i-0000000000000abcd"},
                         "no instance i-0000000000000abcd"),
    "registered": (as_instance, {"instance_id": ID8, "cn": f"system:node:{NODE8}"},
                   f"a node named {NODE8} is already registered"),
    "other-pool": (as_instance, {"instance_id": ID9,
                                 "cn": "system:node:ip-10-213-2-30.lab.internal"},
                   f"instance {ID9} is in pool 'lab-b', its identity was authenticated for "
                   "pool 'lab-a'"),
    "instance-stopped": (as_instance, {"instance_id": ID10}, f"instance {ID10} is stopped"),
    "without-pool": (make_csr, {"groups": ["system:bootstrappers"]}, "exactly one group"),
    "two-pools": (make_csr, {"groups": POOL_GROUPS + ["system:bootstrappers:mzk:lab-b"]},
                  "exactly one group"),
    "extra-other-instance": (make_csr, {"extra": {"mzk.io/instance-id": [ID11]}},
                             "carries mzk.io/instance-id"),
    "bootstrap-token": (make_csr, {"user": "system:bootstrap:abc123"},
                        "neither node " + NODE7 + " nor an instance identity"),
    "some-user": (make_csr, {"user": "alice", "groups": ["system:masters"]},
                  "nor an instance identity"),
    "other-node-asks": (make_csr, {"user": f"system:node:{NODE8}", "groups": NODE_GROUPS},
                        "neither node"),
    # renewal
    "renewal-not-in-nodes": (make_csr, {"user": f"system:node:{NODE7}", "groups": []},
                             "not in group system:nodes"),
    "renewal-stopped": (make_csr, {"cn": "system:node:ip-10-213-1-32.lab.internal",
                                   "user": "system:node:ip-10-213-1-32.lab.internal",
                                   "groups": NODE_GROUPS}, "is stopped"),
    "renewal-gone": (make_csr, {"cn": "system:node:gone", "user": "system:node:gone",
                                "groups": NODE_GROUPS}, "no instance named gone"),
    # serving
    "serving-by-instance": (serving_csr, {"user": f"mzk:instance:{ID7}", "groups": POOL_GROUPS},
                            "is not node " + NODE7),
    "serving-by-other-node": (serving_csr, {"user": f"system:node:{NODE8}"}, "is not node"),
    "serving-not-in-nodes": (serving_csr, {"groups": ["system:authenticated"]},
                             "in group system:nodes"),
    "serving-client-usage": (serving_csr, {"usages": ["server auth", "client auth"]}, "usages"),
    "serving-no-server-auth": (serving_csr, {"usages": ["digital signature"]}, "usages"),
    "serving-no-san": (serving_csr, {"dns": (), "ips": ()}, "at least one DNS or IP SAN"),
    "serving-foreign-ip": (serving_csr, {"ips": ("10.213.1.30", "10.213.1.31")},
                           f"SANs ['10.213.1.31'] do not belong to instance {NODE7}"),
    "serving-tag-name": (serving_csr, {"dns": (NODE7, "lab-a-node")},
                         "SANs ['lab-a-node'] do not belong"),
    "serving-unknown-node": (serving_csr, {"cn": "system:node:gone",
                                           "user": "system:node:gone"}, "no instance named gone"),
}


@pytest.mark.parametrize("build,changes,reason", DENIALS.values(), ids=DENIALS.keys())
def test_a_request_that_breaks_a_rule_is_denied_saying_which(build: Any, changes: dict[str, Any],
                                                             reason: str) -> None:
    decision, why = decide(build(**changes), RECORD, registered)
    assert (decision, reason in why) == ("deny", True), why


APPROVALS = {
    "joining": (make_csr, {}, f"instance {ID7} ({NODE7}) runs in pool lab-a"),
    "joining-usages-minimal": (make_csr, {"usages": ["client auth"]}, "runs in pool lab-a"),
    "joining-extra-matches": (make_csr, {"extra": {"mzk.io/instance-id": [ID7]}}, "runs in"),
    "joining-rsa-2048": (make_csr, {"key": RSA_2048}, "runs in pool lab-a"),
    "joining-p384": (make_csr, {"key": ec.generate_private_key(ec.SECP384R1())}, "runs in"),
    "sibling-own-name": (as_instance, {"instance_id": ID11, "cn": f"system:node:{SIBLING}"},
                         f"instance {ID11} ({SIBLING})"),
    "renewal": (make_csr, {"user": f"system:node:{NODE7}", "groups": NODE_GROUPS},
                "renews its own client certificate"),
    "renewal-of-registered-node": (make_csr, {"cn": f"system:node:{NODE8}",
                                              "user": f"system:node:{NODE8}",
                                              "groups": NODE_GROUPS}, "renews"),
    "serving": (serving_csr, {}, "owning every SAN"),
    "serving-ipv6": (serving_csr, {"ips": ("fd00:213::30", "10.213.1.30")}, "owning every SAN"),
    "serving-only-ip": (serving_csr, {"dns": ()}, "owning every SAN"),
}


@pytest.mark.parametrize("build,changes,reason", APPROVALS.values(), ids=APPROVALS.keys())
def test_an_honest_request_is_approved(build: Any, changes: dict[str, Any], reason: str) -> None:
    decision, why = decide(build(**changes), RECORD, registered)
    assert (decision, reason in why) == ("approve", True), why


def test_a_renewal_needs_no_node_lookup() -> None:
    def no_lookup(name: str) -> bool:
        raise AssertionError("a renewal asked whether the node exists")

    csr = make_csr(user=f"system:node:{NODE7}", groups=NODE_GROUPS)
    assert decide(csr, RECORD, no_lookup)[0] == "approve"


def test_a_joining_instance_is_looked_up_by_its_id_never_by_the_name_it_asks_for() -> None:
    record = Record(*instances())
    decide(make_csr(cn=f"system:node:{SIBLING}"), record, registered)
    assert record.calls == [f"id:{ID7}"]


@pytest.mark.parametrize("csr", [
    make_csr(signer="kubernetes.io/kube-apiserver-client"),
    make_csr(signer="example.com/other", cn="anything", orgs=()),
    make_csr(conditions=({"type": "Approved", "status": "True"},)),
    serving_csr(conditions=({"type": "Denied", "status": "True"},)),
    make_csr(cn="system:node:gone", conditions=({"type": "Failed", "status": "True"},)),
], ids=["other-signer", "foreign-signer", "approved", "denied", "failed"])
def test_other_signers_and_decided_requests_are_left_alone(csr: dict[str, Any]) -> None:
    assert decide(csr, RECORD, registered)[0] == "skip"
    assert not csr_rules.is_ours(csr)


def test_a_lookup_that_fails_is_retried_never_denied() -> None:
    class Down(Record):
        def by_id(self, instance_id: str) -> Instance | None:
            raise LookupFailed("EC2 unreachable")

    def api_down(name: str) -> bool:
        raise LookupFailed("HTTP 503")

    assert decide(make_csr(), Down(), registered) == (
        "skip", "identity not checked yet: EC2 unreachable")
    assert decide(make_csr(), RECORD, api_down)[0] == "skip"


# ---- one name, one instance, one certificate at a time -----------------------------------

def issued(not_after: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{NODE7}")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(9)
            .not_valid_before(not_after - dt.timedelta(days=365)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


APPROVED = ({"type": "Approved", "status": "True"},)
NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("earlier,why", [
    (make_csr(name="csr-0", conditions=APPROVED), "instance " + ID7),  # approved, not issued
    (make_csr(name="csr-0", conditions=APPROVED, certificate=issued(NOW + dt.timedelta(days=1))),
     "instance " + ID7),
], ids=["approved-not-issued", "issued-unexpired"])
def test_a_second_certificate_for_the_same_instance_is_denied(earlier: dict[str, Any],
                                                              why: str) -> None:
    held = held_from([earlier], NOW.timestamp())
    decision, reason = decide(make_csr(name="csr-1"), RECORD, registered, held)
    assert decision == "deny"
    assert reason == (f"a client certificate for {why} was already approved (csr-0) and has "
                      "not expired")


def test_an_expired_or_denied_earlier_certificate_does_not_count() -> None:
    expired = make_csr(name="csr-0", conditions=APPROVED,
                       certificate=issued(NOW - dt.timedelta(minutes=1)))
    denied = make_csr(name="csr-00", conditions=({"type": "Denied", "status": "True"},))
    held = held_from([expired, denied], NOW.timestamp())
    assert decide(make_csr(name="csr-1"), RECORD, registered, held)[0] == "approve"


def test_a_second_certificate_for_the_same_name_is_denied() -> None:
    # ID11 once got a certificate for NODE7 (say, before the rules); ID7 asks for its name.
    earlier = as_instance(ID11, name="csr-0", conditions=APPROVED)
    held = held_from([earlier], NOW.timestamp())
    decision, reason = decide(make_csr(name="csr-1"), RECORD, registered, held)
    assert (decision, reason) == ("deny", f"a client certificate for name {NODE7} was already "
                                          "approved (csr-0) and has not expired")


def test_of_two_pending_requests_only_the_oldest_is_decided() -> None:
    older = make_csr(name="csr-b", created="2026-12-06T10:00:00Z")
    newer = make_csr(name="csr-a", created="2026-12-06T10:00:05Z")
    held = held_from([newer, older], NOW.timestamp())
    assert decide(newer, RECORD, registered, held) == (
        "skip", f"an earlier request for instance {ID7} (csr-b) is undecided")
    assert decide(older, RECORD, registered, held)[0] == "approve"
    held.add("csr-b", ID7, NODE7, "approved", NOW.timestamp() + 3600)  # as the approver does
    assert decide(newer, RECORD, registered, held)[0] == "deny"


def test_held_survives_only_what_it_must() -> None:
    held = Held()
    held.add("csr-1", ID7, NODE7, "waiting", 0)
    held.add("csr-2", ID7, NODE7, "approved", 10)
    assert held.instances[ID7] == held.names[NODE7] == ("csr-2", "approved")
    held.check("csr-2", ID7, NODE7)  # its own entry never blocks it


def test_a_joining_request_is_recognised_from_its_requester() -> None:
    assert csr_rules.joining_instance(make_csr()) == (ID7, NODE7)
    assert csr_rules.joining_instance(serving_csr()) == ("", "")
    assert csr_rules.joining_instance(make_csr(user=f"system:node:{NODE7}")) == ("", "")
    broken = make_csr()
    broken["spec"]["request"] = base64.b64encode(b"x").decode()
    assert csr_rules.joining_instance(broken) == ("", "")
