"""The token webhook (bootstrap.node.identity_webhook): the honest node is authenticated as
its instance, and every impostor is not: a forged or altered signature, another account's or
region's document, a terminated or unknown instance, a registered node's copied document, a
token that is not ours (no cloud call at all). Then the loopback server, and that a token is
never logged."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest
from csr_support import ID7, ID8, ID9, NODE7, Cloud, Record, instances, registered

from bootstrap.node import identity_webhook as webhook
from bootstrap.node.instance_identity import (
    LAB_ACCOUNT,
    Instance,
    LookupFailed,
    identity_token,
    load_trust,
)

CLOUD = Cloud()
TERMINATED = "i-0000000000000000c"


def verifier(record: Record | None = None, node_exists: Any = registered) -> webhook.Verifier:
    record = record or Record(*instances(), Instance(
        "ip-10-213-1-40.lab.internal", "lab-a", "terminated", ("10.213.1.40",), (),
        TERMINATED, LAB_ACCOUNT))
    return webhook.Verifier(load_trust(CLOUD.public_pem()), record, node_exists)


def token_review(token: Any, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, **spec}}


def test_the_honest_node_is_its_instance_in_its_pool() -> None:
    logged: list[str] = []
    answer = webhook.review(token_review(CLOUD.token(), audiences=["https://kubernetes"]),
                            verifier(), logged.append)
    assert answer == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "status": {"authenticated": True, "audiences": ["https://kubernetes"],
                                 "user": {"username": f"mzk:instance:{ID7}", "uid": ID7,
                                          "groups": ["system:bootstrappers",
                                                     "system:bootstrappers:mzk:lab-a"],
                                          "extra": {"mzk.io/instance-id": [ID7]}}}}
    assert logged == [f'webhook instance={ID7} pool=lab-a result=authenticated '
                      f'reason="instance {ID7} ({NODE7}) runs in pool lab-a"']


def altered(token: str) -> str:
    document = CLOUD.document().replace(b"lab.small", b"lab.large")
    return identity_token(document, CLOUD.sign(CLOUD.document()))


IMPOSTORS = {
    "forged": (lambda: Cloud().token(), "does not verify with a trusted key"),
    "altered": (lambda: altered(CLOUD.token()), "does not verify with a trusted key"),
    "other-account": (lambda: CLOUD.token(account="123456789012"),
                      "a document of account '123456789012', the instance is in "
                      "'000000000000'"),
    "other-region": (lambda: CLOUD.token(region="eu-west-1"),
                     "a document of region 'eu-west-1', this cluster is in 'lab'"),
    "terminated": (lambda: CLOUD.token(instance_id=TERMINATED, private_ip="10.213.1.40"),
                   f"instance {TERMINATED} is terminated, not running"),
    "unknown": (lambda: CLOUD.token(instance_id="i-0000000000000ffff"),
                "instance i-0000000000000ffff is not a node of this cluster"),
    "joined-already": (lambda: CLOUD.token(instance_id=ID8, private_ip="10.213.1.31"),
                       "a node named ip-10-213-1-31.lab.internal is already registered"),
    "other-address": (lambda: CLOUD.token(private_ip="10.213.9.9"),
                      "the document's address 10.213.9.9 is not the instance's"),
    "unsigned-json": (lambda: identity_token(b"[]", CLOUD.sign(b"[]")),
                      "a signed document without instanceId, accountId, region"),
    "bad-encoding": (lambda: "mzk-iid.@@.@@", "two base64url parts"),
}


@pytest.mark.parametrize("make,reason", IMPOSTORS.values(), ids=IMPOSTORS.keys())
def test_an_impostor_is_not_authenticated_and_we_say_why(make: Any, reason: str) -> None:
    logged: list[str] = []
    answer = webhook.review(token_review(make()), verifier(), logged.append)
    assert answer["status"] == {"authenticated": False}
    (line,) = logged
    assert "result=unauthenticated" in line and json.dumps(reason)[1:-1] in line, line


def test_the_other_pools_instance_is_authenticated_in_its_own_pool_only() -> None:
    answer = webhook.review(token_review(CLOUD.token(instance_id=ID9, private_ip="10.213.2.30")),
                            verifier(), lambda line: None)
    assert answer["status"]["user"]["groups"] == ["system:bootstrappers",
                                                  "system:bootstrappers:mzk:lab-b"]


@pytest.mark.parametrize("token", ["eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "abcdef.0123456789abcdef",
                                   "", "mzk-iid"])
def test_a_token_that_is_not_ours_costs_no_lookup(token: str) -> None:
    class Untouchable(Record):
        def by_id(self, instance_id: str) -> Instance | None:
            raise AssertionError("a cloud call for a token that is not ours")

        lookup = by_id  # type: ignore[assignment]

    def no_nodes(name: str) -> bool:
        raise AssertionError("an API call for a token that is not ours")

    logged: list[str] = []
    answer = webhook.review(token_review(token), verifier(Untouchable(), no_nodes), logged.append)
    assert answer["status"] == {"authenticated": False}
    assert logged == ['webhook instance=- pool=- result=unauthenticated '
                      'reason="not an instance identity token"']


def test_a_failed_lookup_is_an_error_to_retry_not_a_denial() -> None:
    class Down(Record):
        def by_id(self, instance_id: str) -> Instance | None:
            raise LookupFailed("EC2 unreachable")

    logged: list[str] = []
    answer = webhook.review(token_review(CLOUD.token()), verifier(Down()), logged.append)
    assert answer["status"] == {"authenticated": False,
                                "error": "identity not checked yet: EC2 unreachable"}
    assert "result=retry" in logged[0]


@pytest.mark.parametrize("body", [{}, [], {"kind": "TokenReview", "spec": {"token": "x"}},
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                   "spec": {"token": 7}}])
def test_a_request_that_is_not_a_token_review_is_not_authenticated(body: Any) -> None:
    answer = webhook.review(body, verifier(), lambda line: None)
    assert answer["status"] == {"authenticated": False}


@pytest.mark.parametrize("listen,ok", [("127.0.0.1:10262", True), ("127.0.0.5:1", True),
                                       ("0.0.0.0:10262", False), ("10.0.0.1:10262", False),
                                       ("localhost:10262", False), ("127.0.0.1:0", False),
                                       ("127.0.0.1", False), ("127.0.0.1:http", False)])
def test_the_webhook_listens_on_loopback_only(listen: str, ok: bool) -> None:
    if ok:
        assert webhook.parse_listen(listen)[0].startswith("127.")
    else:
        with pytest.raises(ValueError, match="must be a loopback HOST:PORT"):
            webhook.parse_listen(listen)


def test_the_server_answers_the_api_server_and_never_logs_a_token(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a free port (the webhook refuses port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = webhook.serve(verifier(), f"127.0.0.1:{port}")
    honest, forged = CLOUD.token(), Cloud().token()
    try:
        answers = []
        for body in (token_review(honest), token_review(forged)):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("POST", webhook.WEBHOOK_PATH, json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
            connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/other", "{}")
        assert connection.getresponse().status == 404
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", webhook.WEBHOOK_PATH, "not json")
        assert connection.getresponse().status == 400
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [(status, a["status"]["authenticated"]) for status, a in answers] == [
        (200, True), (200, False)]
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2
    for token in (honest, forged):
        for part in token.split("."):
            assert part not in out.out + out.err
