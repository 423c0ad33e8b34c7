"""Kubeconfig files with embedded certificates, shaped as the PKI document's `kubectl config`
commands make them: cluster `default-cluster`, one credential, context `default-system`.

Rendering is a fixed template (byte-for-byte stable, so a re-run can compare bytes);
reading accepts any kubeconfig that YAML can parse.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import yaml

from bootstrap.pki.table import KUBECONFIG_CLUSTER, KUBECONFIG_CONTEXT

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TEMPLATE = """\
apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {context}
  context:
    cluster: {cluster}
    user: {user}
current-context: {context}
preferences: {{}}
"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render(server: str, credential: str, ca_pem: bytes, cert_pem: bytes,
           key_pem: bytes) -> bytes:
    return _TEMPLATE.format(cluster=KUBECONFIG_CLUSTER, context=KUBECONFIG_CONTEXT,
                            server=server, user=credential, ca=_b64(ca_pem),
                            cert=_b64(cert_pem), key=_b64(key_pem)).encode("ascii")


@dataclass(frozen=True)
class Parsed:
    server: str
    credential: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def parse(data: bytes) -> Parsed:
    """The current context's cluster and user. Raises ValueError if it is not that shape."""
    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 - a safe loader
        context_name = doc["current-context"]
        context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in doc["clusters"]
                       if c["name"] == context["cluster"])
        user = next(u for u in doc["users"] if u["name"] == context["user"])
        return Parsed(server=cluster["server"], credential=user["name"],
                      ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
                      cert_pem=base64.b64decode(user["user"]["client-certificate-data"]),
                      key_pem=base64.b64decode(user["user"]["client-key-data"]))
    except (yaml.YAMLError, KeyError, TypeError, StopIteration, ValueError) as err:
        raise ValueError(f"not a kubeconfig with embedded credentials ({err})") from err


_CREDENTIALS = re.compile(rb"^    client-certificate-data: (\S+)\n    client-key-data: (\S+)$",
                          re.MULTILINE)


def credentials(data: bytes) -> tuple[bytes, bytes]:
    """(client certificate PEM, client key PEM): fast for our own template, any kubeconfig
    otherwise. Raises ValueError."""
    match = _CREDENTIALS.search(data)
    if match and data.count(b"client-certificate-data") == 1:
        try:
            return base64.b64decode(match[1], validate=True), base64.b64decode(match[2],
                                                                               validate=True)
        except ValueError:
            pass
    parsed = parse(data)
    return parsed.cert_pem, parsed.key_pem
