"""The pod network agent as a node service: its files, its command line and its unit, one
definition for both kinds of node.

Inventory nodes get it from the nodes step over SSH; auto-scaled nodes from their user data
(bootstrap.node.join), with nothing from us over SSH. The agent (bootstrap.node.pod_network)
reads Nodes with its node's own kubelet credential, which the Node authorizer lets list
Nodes and nothing of other nodes' to change: inventory nodes get a copy of their kubelet's
client certificate and key (0600); auto-scaled nodes point at the file the kubelet keeps
rotating after TLS bootstrapping, which the agent reloads when it changes.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from bootstrap.pki.table import KUBELET_PKI_DIR
from bootstrap.services import Service

NAME = "mzk-pod-network"
BIN_DIR = "/var/lib/mzk/bin"
PROGRAM = f"{BIN_DIR}/{NAME}"
STATUS_FILE = "/run/mzk/pod-network.json"
# Inventory nodes: their kubelet's client certificate and key, copied from kubelet.conf.
CREDENTIAL = "/var/lib/mzk/pod-network/kubelet-client.pem"
# Auto-scaled nodes: what the kubelet writes after TLS bootstrapping and rotates.
ROTATED_CREDENTIAL = f"{KUBELET_PKI_DIR}/kubelet-client-current.pem"
CA_FILE = "/etc/kubernetes/pki/ca.crt"
PYTHON = "/usr/bin/python3"


def program_files(compact: bool = False) -> dict[str, bytes]:
    """The agent as shipped: its program and, beside it, the modules it imports; `compact`
    (user data, which EC2 caps at 16 KiB) without docstrings and comments."""
    from bootstrap.node import kube_api, pod_network

    source = Path(pod_network.__file__).parent
    assert Path(kube_api.__file__).parent == source
    files = {PROGRAM: Path(pod_network.__file__).read_bytes(),
             **{f"{BIN_DIR}/{name}.py": (source / f"{name}.py").read_bytes()
                for name in pod_network.COMPANIONS}}
    return {path: compacted(text) for path, text in files.items()} if compact else files


def compacted(source: bytes) -> bytes:
    """The same program without docstrings and comments (the syntax tree, unparsed)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value,
                                                                     ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return (ast.unparse(tree) + "\n").encode()


def program_digest() -> str:
    return hashlib.sha256(b"".join(program_files().values())).hexdigest()


def command(*, server: str, credential: str, node: str, cluster_cidr: str,
            service_cidr: str, python: str = PYTHON) -> list[str]:
    return [python, PROGRAM, "--server", server, "--ca", CA_FILE, "--cert", credential,
            "--key", credential, "--node", node, "--cluster-cidr", cluster_cidr,
            "--service-cidr", service_cidr, "--status", STATUS_FILE]


def service(command_line: list[str], env: dict[str, str] | None = None) -> Service:
    return Service(name=NAME, command_line=command_line, env=env or {},
                   after=("kubelet.service",),
                   description="pod network: VXLAN routes to every other node's pods")
