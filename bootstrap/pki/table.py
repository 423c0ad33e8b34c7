"""The cluster PKI as data: the tables of the Kubernetes "PKI certificates and requirements"
document (shared/seeds/004, part 5), one row per line, to be read beside it.

Nothing here generates anything. `bootstrap.pki.issue` walks these tables; later steps
render command-line flags from `FILE_USES`. Where we go beyond the document (the kubelet
serving certificate, the service-account signing flag, the kubelet's CA flags) the row says
`source=DESIGN`, so the document's own rows stay checkable word for word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bootstrap.inventory import Host, Inventory

PKI_DIR = "/etc/kubernetes/pki"
KUBERNETES_DIR = "/etc/kubernetes"
KUBELET_PKI_DIR = "/var/lib/kubelet/pki"  # the kubelet's own default --cert-dir

DOCUMENT = "document"  # a row of seed 004, part 5
DESIGN = "design"  # a row of ours, beyond the document, with the reason in `why`

# Roles (bootstrap.inventory.ROLES) that receive a row's files.
CONTROL_PLANE = "control-plane"
ETCD = "etcd"
NODE = "node"

# "kind" column -> key usages and extended key usages (the document's "kind" table).
KIND_USAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "server": (("digital_signature", "key_encipherment"), "server_auth"),
    "client": (("digital_signature", "key_encipherment"), "client_auth"),
}
# Beyond the document (DESIGN): the table's usages assume RSA. An ECDSA key cannot encipher
# keys, and RFC 5480 (section 3) says keyEncipherment MUST NOT be set for one; ECDSA
# certificates (CAs included) leave these out.
NOT_FOR_ECDSA: frozenset[str] = frozenset({"key_encipherment"})
# Our CAs sign leaves only, never another CA: BasicConstraints pathLenConstraint 0.
CA_PATH_LENGTH = 0


@dataclass(frozen=True)
class CA:
    """A row of the "required CAs" table."""

    name: str  # the document's default CN doubles as our handle
    base: str  # path of .crt/.key relative to PKI_DIR, without extension
    description: str
    source: str = DOCUMENT
    why: str = ""
    egress: str | None = None  # hosts receive it only in this `cluster.egress` mode

    @property
    def key_on_hosts(self) -> bool:
        """Whether `pki.ca_keys_on_hosts` puts its key on control-plane hosts: only the
        document's CAs (the controller-manager signs with the cluster CA); ours sign
        nothing on hosts."""
        return self.source == DOCUMENT

    @property
    def cert_path(self) -> str:
        return f"{PKI_DIR}/{self.base}.crt"

    @property
    def key_path(self) -> str:
        return f"{PKI_DIR}/{self.base}.key"


CAS: tuple[CA, ...] = (
    CA("kubernetes-ca", "ca", "Kubernetes general CA"),
    CA("etcd-ca", "etcd/ca", "for all etcd-related functions"),
    CA("kubernetes-front-proxy-ca", "front-proxy-ca", "for the front-end proxy"),
    CA("konnectivity-ca", "konnectivity/ca", "for Konnectivity servers and agents",
       source=DESIGN, egress="konnectivity",
       why="proxy-servers accept agents whose client certificate this CA signed; signed by "
           "the cluster CA, any kubelet or admin certificate would pass as an agent"),
)
CA_BY_NAME = {ca.name: ca for ca in CAS}


@dataclass(frozen=True)
class SANs:
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    """What is known only at run time: the inventory and the host a file is for."""

    inventory: Inventory
    host: Host


SANHook = Callable[[Context], SANs]


def no_sans(ctx: Context) -> SANs:
    return SANs()


def host_and_loopback(ctx: Context) -> SANs:
    """`<hostname>, <Host_IP>, localhost, 127.0.0.1` (the etcd rows)."""
    return SANs(dns=(ctx.host.name, "localhost"),
                ips=_unique((ctx.host.address, "127.0.0.1")))


def apiserver_sans(ctx: Context) -> SANs:
    """`<hostname>, <Host_IP>, <advertise_IP>` and note [1]: every load balancer name and
    address, the `kubernetes` service names, and the service's ClusterIP."""
    cluster = ctx.inventory.cluster
    service_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    labels = cluster.dns_domain.split(".")
    # Every partial qualification, as the document lists for cluster.local:
    # kubernetes.default.svc.cluster and kubernetes.default.svc.cluster.local.
    service_names += ["kubernetes.default.svc." + ".".join(labels[:i])
                      for i in range(1, len(labels) + 1)]
    endpoints = ctx.inventory.endpoints()
    dns = (ctx.host.name, *(e.name for e in endpoints), *service_names)
    ips = (ctx.host.address, ctx.host.advertise_address,
           *(e.address for e in endpoints if e.address), cluster.kubernetes_service_ip)
    return SANs(dns=_unique(dns), ips=_unique(ips))


def node_name_and_address(ctx: Context) -> SANs:
    """The kubelet serving certificate: the node's name and address."""
    return SANs(dns=(ctx.host.name,), ips=_unique((ctx.host.address,
                                                   ctx.host.advertise_address)))


def konnectivity_server_sans(ctx: Context) -> SANs:
    """The names and addresses agents dial (their zone's endpoint), and the host's own."""
    zones = [z.endpoint for z in ctx.inventory.zones]
    return SANs(dns=_unique((*(e.name for e in zones), ctx.host.name)),
                ips=_unique(tuple(a for a in (*(e.address for e in zones), ctx.host.address)
                                  if a)))


def _unique(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class Leaf:
    """A row of the "all certificates" table (plus our kubelet serving row)."""

    name: str  # handle used by FILE_USES and kubeconfigs
    cn: str  # "{node}" is replaced by the host's name
    ca: str  # CA.name of the parent
    orgs: tuple[str, ...]
    kinds: tuple[str, ...]
    sans: SANHook
    cert_path: str
    key_path: str
    roles: tuple[str, ...]  # which hosts receive it
    source: str = DOCUMENT
    why: str = ""
    egress: str | None = None  # hosts receive it only in this `cluster.egress` mode

    def common_name(self, host: Host) -> str:
        return self.cn.format(node=host.name)


def _pki(base: str) -> tuple[str, str]:
    return f"{PKI_DIR}/{base}.crt", f"{PKI_DIR}/{base}.key"


LEAVES: tuple[Leaf, ...] = (
    Leaf("kube-etcd", "kube-etcd", "etcd-ca", (), ("server", "client"), host_and_loopback,
         *_pki("etcd/server"), roles=(ETCD,)),
    Leaf("kube-etcd-peer", "kube-etcd-peer", "etcd-ca", (), ("server", "client"),
         host_and_loopback, *_pki("etcd/peer"), roles=(ETCD,)),
    Leaf("kube-etcd-healthcheck-client", "kube-etcd-healthcheck-client", "etcd-ca", (),
         ("client",), no_sans, *_pki("etcd/healthcheck-client"), roles=(ETCD,)),
    Leaf("kube-apiserver-etcd-client", "kube-apiserver-etcd-client", "etcd-ca",
         ("system:masters",), ("client",), no_sans, *_pki("apiserver-etcd-client"),
         roles=(CONTROL_PLANE,)),
    Leaf("kube-apiserver", "kube-apiserver", "kubernetes-ca", (), ("server",), apiserver_sans,
         *_pki("apiserver"), roles=(CONTROL_PLANE,)),
    Leaf("kube-apiserver-kubelet-client", "kube-apiserver-kubelet-client", "kubernetes-ca",
         ("system:masters",), ("client",), no_sans, *_pki("apiserver-kubelet-client"),
         roles=(CONTROL_PLANE,)),
    Leaf("front-proxy-client", "front-proxy-client", "kubernetes-front-proxy-ca", (),
         ("client",), no_sans, *_pki("front-proxy-client"), roles=(CONTROL_PLANE,)),
    Leaf("kubelet-serving", "system:node:{node}", "kubernetes-ca", ("system:nodes",),
         ("server",), node_name_and_address, f"{KUBELET_PKI_DIR}/kubelet.crt",
         f"{KUBELET_PKI_DIR}/kubelet.key", roles=(NODE,), source=DESIGN,
         why="the API server verifies kubelets (--kubelet-certificate-authority); a kubelet "
             "left to itself serves a self-signed certificate"),
    Leaf("csr-approver", "mzk:csr-approver", "kubernetes-ca", (), ("client",), no_sans,
         *_pki("csr-approver"), roles=(CONTROL_PLANE,), source=DESIGN,
         why="approves kubelet certificate requests of joined nodes once their identity is "
             "verified (bootstrap.node.csr_approver); its own identity, least privilege"),
    Leaf("konnectivity-server", "konnectivity-server", "konnectivity-ca", (), ("server",),
         konnectivity_server_sans, *_pki("konnectivity/server"), roles=(CONTROL_PLANE,),
         source=DESIGN, egress="konnectivity",
         why="agents verify the proxy-server they dial (seed 001: no unverified connection)"),
    Leaf("konnectivity-agent", "konnectivity-agent:{node}", "konnectivity-ca", (),
         ("client",), no_sans, *_pki("konnectivity/agent"), roles=(NODE,), source=DESIGN,
         egress="konnectivity",
         why="proxy-servers accept only agents with a certificate of ours"),
)
LEAF_BY_NAME = {leaf.name: leaf for leaf in LEAVES}


@dataclass(frozen=True)
class Kubeconfig:
    """A row of the user-accounts table: file, credential name, CN and O of its client
    certificate, and which API endpoint it points at."""

    file: str
    credential: str
    cn: str
    orgs: tuple[str, ...]
    command: str
    endpoint: str  # "host": this host's own API server; "zone": its zone's load balancer
    roles: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"{KUBERNETES_DIR}/{self.file}"

    def common_name(self, host: Host) -> str:
        return self.cn.format(node=host.name)


KUBECONFIGS: tuple[Kubeconfig, ...] = (
    Kubeconfig("admin.conf", "default-admin", "kubernetes-admin", ("system:masters",),
               "kubectl", "host", (CONTROL_PLANE,)),
    Kubeconfig("kubelet.conf", "default-auth", "system:node:{node}", ("system:nodes",),
               "kubelet", "zone", (NODE,)),
    Kubeconfig("controller-manager.conf", "default-controller-manager",
               "system:kube-controller-manager", (), "kube-controller-manager", "host",
               (CONTROL_PLANE,)),
    Kubeconfig("scheduler.conf", "default-scheduler", "system:kube-scheduler", (),
               "kube-scheduler", "host", (CONTROL_PLANE,)),
)
KUBECONFIG_CA = "kubernetes-ca"  # every kubeconfig's client certificate is signed by it
KUBECONFIG_CLUSTER = "default-cluster"
KUBECONFIG_CONTEXT = "default-system"
# The operator's own admin kubeconfig, for the regional endpoint (seed 003).
OPERATOR_ADMIN = KUBECONFIGS[0]

SA_KEY = f"{PKI_DIR}/sa.key"
SA_PUB = f"{PKI_DIR}/sa.pub"


@dataclass(frozen=True)
class FileUse:
    """A row of the "certificate file paths" table (and the service-account table):
    which command reads the file, with which flags for the key and for the certificate."""

    file: str  # a CA.name, Leaf.name, or "sa"
    command: str
    key_flags: tuple[str, ...]
    cert_flags: tuple[str, ...]
    source: str = DOCUMENT
    why: str = ""


FILE_USES: tuple[FileUse, ...] = (
    FileUse("etcd-ca", "kube-apiserver", (), ("--etcd-cafile",)),
    FileUse("kube-apiserver-etcd-client", "kube-apiserver", ("--etcd-keyfile",),
            ("--etcd-certfile",)),
    FileUse("kubernetes-ca", "kube-apiserver", (), ("--client-ca-file",)),
    FileUse("kubernetes-ca", "kube-controller-manager", ("--cluster-signing-key-file",),
            ("--client-ca-file", "--root-ca-file", "--cluster-signing-cert-file")),
    FileUse("kube-apiserver", "kube-apiserver", ("--tls-private-key-file",),
            ("--tls-cert-file",)),
    FileUse("kube-apiserver-kubelet-client", "kube-apiserver", ("--kubelet-client-key",),
            ("--kubelet-client-certificate",)),
    FileUse("kubernetes-front-proxy-ca", "kube-apiserver", (),
            ("--requestheader-client-ca-file",)),
    FileUse("kubernetes-front-proxy-ca", "kube-controller-manager", (),
            ("--requestheader-client-ca-file",)),
    FileUse("front-proxy-client", "kube-apiserver", ("--proxy-client-key-file",),
            ("--proxy-client-cert-file",)),
    FileUse("etcd-ca", "etcd", (), ("--trusted-ca-file", "--peer-trusted-ca-file")),
    FileUse("kube-etcd", "etcd", ("--key-file",), ("--cert-file",)),
    FileUse("kube-etcd-peer", "etcd", ("--peer-key-file",), ("--peer-cert-file",)),
    FileUse("etcd-ca", "etcdctl", (), ("--cacert",)),
    FileUse("kube-etcd-healthcheck-client", "etcdctl", ("--key",), ("--cert",)),
    # The service-account table: private key path, public key path, command, flag.
    FileUse("sa", "kube-controller-manager", ("--service-account-private-key-file",), ()),
    FileUse("sa", "kube-apiserver", (), ("--service-account-key-file",)),
    # Beyond the document:
    FileUse("sa", "kube-apiserver", ("--service-account-signing-key-file",), (),
            source=DESIGN, why="required by the API server since Kubernetes 1.20"),
    FileUse("kubernetes-ca", "kube-apiserver", (), ("--kubelet-certificate-authority",),
            source=DESIGN, why="verify kubelet serving certificates (seed 000)"),
    FileUse("kubernetes-ca", "kubelet", (), ("--client-ca-file",), source=DESIGN,
            why="kubelet authentication: no anonymous requests, clients signed by the CA"),
    FileUse("kubelet-serving", "kubelet", ("--tls-private-key-file",), ("--tls-cert-file",),
            source=DESIGN, why="kubelet serves with a CA-signed certificate"),
    FileUse("konnectivity-ca", "proxy-server", (), ("--cluster-ca-cert",), source=DESIGN,
            why="accept agents signed by the Konnectivity CA only"),
    FileUse("konnectivity-server", "proxy-server", ("--cluster-key",), ("--cluster-cert",),
            source=DESIGN, why="the TLS identity agents verify"),
    FileUse("konnectivity-ca", "proxy-agent", (), ("--ca-cert",), source=DESIGN,
            why="verify the proxy-server"),
    FileUse("konnectivity-agent", "proxy-agent", ("--agent-key",), ("--agent-cert",),
            source=DESIGN, why="the agent's client certificate"),
)


def paths_of(file: str) -> tuple[str, str]:
    """(key path, certificate path) of a FILE_USES file handle."""
    if file == "sa":
        return SA_KEY, SA_PUB
    if file in CA_BY_NAME:
        ca = CA_BY_NAME[file]
        return ca.key_path, ca.cert_path
    leaf = LEAF_BY_NAME[file]
    return leaf.key_path, leaf.cert_path


def flags_for(command: str, ca_keys_on_hosts: bool = True) -> dict[str, str]:
    """The file flags of one command, e.g. flags_for("etcd")["--cert-file"].

    With CA keys kept off the hosts there is no CA key to point at, so flags naming one
    (the controller-manager's --cluster-signing-key-file) are left out.
    """
    flags: dict[str, str] = {}
    for use in FILE_USES:
        if use.command != command:
            continue
        key_path, cert_path = paths_of(use.file)
        skip_key = use.file in CA_BY_NAME and not ca_keys_on_hosts
        for flag in use.key_flags:
            if not skip_key:
                flags[flag] = key_path
        for flag in use.cert_flags:
            flags[flag] = cert_path
    if not ca_keys_on_hosts and "--cluster-signing-cert-file" in flags:
        del flags["--cluster-signing-cert-file"]  # signing needs both halves, or neither
    return flags


def flag_words(command: str, ca_keys_on_hosts: bool = True) -> list[str]:
    """`flags_for` as command-line words, `--flag=path`, in a stable order."""
    return [f"{flag}={path}" for flag, path in sorted(flags_for(command,
                                                               ca_keys_on_hosts).items())]
