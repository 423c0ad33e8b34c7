"""The API server's token webhook for joining nodes: a cloud-signed instance identity is the
node's only bootstrap credential.

A kubelet's bootstrap kubeconfig holds `mzk-iid.<document>.<signature>`
(bootstrap.node.instance_identity.identity_token); the API server asks us (TokenReview,
authentication.k8s.io/v1) who that is. Authenticated, as `mzk:instance:<instance-id>` in
`system:bootstrappers` and `system:bootstrappers:mzk:<pool>` (which may only ask for a
kubelet client certificate), only if: the signature verifies against a trusted key; the
document is of this cluster's account and region; the instance, looked up by its ID (never a
tag), is a running node of this cluster in a pool; and no Node of its name is registered yet,
so a copied document is useless once the node joined. Anything not starting with `mzk-iid.`
is refused at once, with no cloud call.

Served by the CSR approver's process (bootstrap.node.csr_approver, `--webhook-listen`) on
loopback only, plain HTTP: only the API server on the same host asks. Tokens are never
logged; each decision is one `key=value` line. Standard library only (shipped beside the
approver to the control-plane hosts).
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

try:  # in the project
    from bootstrap.node.asn1_der import PublicKey
    from bootstrap.node.instance_identity import (
        TOKEN_PREFIX,
        Identity,
        LookupFailed,
        parse_identity_token,
        signature_verifies,
    )
except ImportError:  # on a host: shipped beside the approver
    from asn1_der import PublicKey  # type: ignore[no-redef]
    from instance_identity import (  # type: ignore[no-redef]
        TOKEN_PREFIX,
        Identity,
        LookupFailed,
        parse_identity_token,
        signature_verifies,
    )

WEBHOOK_HOST, WEBHOOK_PORT, WEBHOOK_PATH = "127.0.0.1", 10262, "/authenticate"
API_VERSION = "authentication.k8s.io/v1"
USER_PREFIX = "mzk:instance:"
BOOTSTRAPPERS = "system:bootstrappers"
POOL_GROUP = "system:bootstrappers:mzk:"
EXTRA_INSTANCE_ID = "mzk.io/instance-id"
MAX_BODY = 65536


@dataclass(frozen=True)
class Verdict:
    authenticated: bool
    reason: str
    instance_id: str = ""
    pool: str = ""
    retry: bool = False  # a lookup failed: not a denial, the kubelet asks again


class Verifier:
    """Decides whether an identity token is a node of this cluster that may join now."""

    def __init__(self, keys: Sequence[PublicKey], identity: Identity,
                 node_exists: Callable[[str], bool]) -> None:
        self.keys, self.identity, self.node_exists = list(keys), identity, node_exists

    def check(self, token: str) -> Verdict:
        if not token.startswith(TOKEN_PREFIX):
            return Verdict(False, "not an instance identity token")
        try:
            document, signature = parse_identity_token(token)
        except ValueError as err:
            return Verdict(False, str(err))
        if not signature_verifies(document, signature, self.keys):
            return Verdict(False, "the document's signature does not verify with a trusted key")
        try:
            fields = json.loads(document)
        except ValueError:
            fields = None
        if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in (
                "instanceId", "accountId", "region")):
            return Verdict(False, "a signed document without instanceId, accountId, region")
        instance_id = fields["instanceId"]
        try:
            return self._check_instance(instance_id, fields)
        except LookupFailed as err:
            return Verdict(False, f"identity not checked yet: {err}", instance_id, retry=True)

    def _check_instance(self, instance_id: str, fields: dict[str, Any]) -> Verdict:
        def deny(reason: str, pool: str = "") -> Verdict:
            return Verdict(False, reason, instance_id, pool)

        if fields["region"] != self.identity.region:
            return deny(f"a document of region {fields['region']!r}, "
                        f"this cluster is in {self.identity.region!r}")
        instance = self.identity.by_id(instance_id)
        if instance is None:
            return deny(f"instance {instance_id} is not a node of this cluster")
        if fields["accountId"] != instance.account:
            return deny(f"a document of account {fields['accountId']!r}, the instance is "
                        f"in {instance.account!r}", instance.pool)
        if instance.state != "running":
            return deny(f"instance {instance_id} is {instance.state}, not running", instance.pool)
        if not instance.pool or not instance.name:
            return deny(f"instance {instance_id} has no pool or no private DNS name")
        private_ip = fields.get("privateIp")
        if isinstance(private_ip, str) and private_ip not in instance.addresses:
            return deny(f"the document's address {private_ip} is not the instance's",
                        instance.pool)
        if self.node_exists(instance.name):
            return deny(f"a node named {instance.name} is already registered", instance.pool)
        return Verdict(True, f"instance {instance_id} ({instance.name}) runs in pool "
                             f"{instance.pool}", instance_id, instance.pool)


def user_info(verdict: Verdict) -> dict[str, Any]:
    return {"username": USER_PREFIX + verdict.instance_id, "uid": verdict.instance_id,
            "groups": [BOOTSTRAPPERS, POOL_GROUP + verdict.pool],
            "extra": {EXTRA_INSTANCE_ID: [verdict.instance_id]}}


def _log_line(verdict: Verdict) -> str:
    result = ("authenticated" if verdict.authenticated
              else "retry" if verdict.retry else "unauthenticated")
    return (f"webhook instance={verdict.instance_id or '-'} pool={verdict.pool or '-'} "
            f"result={result} reason={json.dumps(verdict.reason)}")


def review(body: dict[str, Any], verifier: Verifier,
           log: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict[str, Any]:
    """The TokenReview answer to a TokenReview request (never raises for a bad request: it
    is simply not authenticated)."""
    spec = body.get("spec") if isinstance(body, dict) else None
    token = spec.get("token") if isinstance(spec, dict) else None
    if not isinstance(body, dict) or body.get("kind") != "TokenReview" or \
            body.get("apiVersion") != API_VERSION or not isinstance(token, str):
        verdict = Verdict(False, f"not a {API_VERSION} TokenReview with a token")
    else:
        verdict = verifier.check(token)
    log(_log_line(verdict))
    status: dict[str, Any] = {"authenticated": verdict.authenticated}
    if verdict.authenticated:
        status["user"] = user_info(verdict)
        audiences = spec.get("audiences") if isinstance(spec, dict) else None
        if isinstance(audiences, list) and audiences:
            status["audiences"] = audiences  # valid for whichever audience the server asks
    elif verdict.retry:
        status["error"] = verdict.reason
    return {"apiVersion": API_VERSION, "kind": "TokenReview", "status": status}


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` on a loopback address only (the API server on this host is the client)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
        number = int(port)
    except ValueError:
        loopback, number = False, 0
    if not loopback or not 0 < number < 65536:
        raise ValueError(f"--webhook-listen {text!r} must be a loopback HOST:PORT, "
                         f"e.g. {WEBHOOK_HOST}:{WEBHOOK_PORT}")
    return host, number


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != WEBHOOK_PATH:
            return self._reply(404, {"error": f"only {WEBHOOK_PATH}"})
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._reply(413 if length > MAX_BODY else 400, {"error": "body size"})
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            return self._reply(400, {"error": "not JSON"})
        self._reply(200, review(body, self.server.verifier, self.server.log))

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """No access log: a request line is harmless, but nothing here may ever echo a body."""


class _Server(HTTPServer):
    def __init__(self, address: tuple[str, int], verifier: Verifier,
                 log: Callable[[str], None]) -> None:
        self.verifier, self.log = verifier, log
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        print(f"webhook error from {client_address}: {sys.exc_info()[1]!r}", file=sys.stderr,
              flush=True)


def serve(verifier: Verifier, listen: str,
          log: Callable[[str], None] = lambda line: print(line, flush=True)) -> HTTPServer:
    """Serve TokenReview on `listen` (loopback) from a daemon thread, one request at a time
    (reviews are quick and cached by the API server; the identity source is shared)."""
    server = _Server(parse_listen(listen), verifier, log)
    threading.Thread(target=server.serve_forever, args=(0.2,), name="identity-webhook",
                     daemon=True).start()
    return server
