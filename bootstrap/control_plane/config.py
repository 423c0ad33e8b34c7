"""The control plane's configuration files and command lines, as pure functions.

Nothing here touches a host; `bootstrap.steps.control_plane` places these files and runs
these commands. Certificate flags come from the PKI table (`flags_for`), so the document's
"certificate file paths" table is the only place a PKI path is written down.

Choices (each one a line of seed 000/001/004, or the reason given):
- Anonymous requests are allowed only on /livez, /readyz and /healthz (an authentication
  configuration with anonymous conditions), so load balancers can health-check while every
  other anonymous request is refused.
- Authorization Node,RBAC; admission NodeRestriction and PodSecurity, whose cluster
  defaults are enforce `baseline`, audit and warn `restricted`, pinned to the cluster's
  minor version (seed 004, part 4).
- Secrets encrypted at rest with secretbox (XSalsa20-Poly1305) under a key made locally;
  `identity` last, so data written before encryption was on stays readable.
- An audit log with size and age limits; request bodies are never logged for Secrets,
  ConfigMaps or token requests.
- Connections to nodes, pods and services go through the egress selector's `cluster` path
  (`bootstrap.egress`): SSH tunnels or Konnectivity, never straight over the network.
- The API server listens on the host's own address only; the controller-manager and the
  scheduler on 127.0.0.1 only (no other control-plane component serves remote traffic).
- Joining nodes authenticate with their cloud-signed instance identity: with node pools, a
  token webhook (the CSR approver, on this host's loopback) reviews bearer tokens no other
  authenticator knows; bootstrap tokens are off (no shared join secret exists).
"""

from __future__ import annotations

from dataclasses import dataclass

from bootstrap.egress import hostconfig
from bootstrap.inventory import Host, Inventory
from bootstrap.node.identity_webhook import WEBHOOK_HOST, WEBHOOK_PATH, WEBHOOK_PORT
from bootstrap.pki.table import LEAF_BY_NAME, flag_words

CONFIG_DIR = "/etc/kubernetes"
AUTHENTICATION = f"{CONFIG_DIR}/authentication.yaml"
ADMISSION = f"{CONFIG_DIR}/admission.yaml"
AUDIT_POLICY = f"{CONFIG_DIR}/audit-policy.yaml"
ENCRYPTION = f"{CONFIG_DIR}/encryption.yaml"
AUDIT_LOG = "/var/log/kubernetes/audit/audit.log"
CONTROLLER_MANAGER_CONF = f"{CONFIG_DIR}/controller-manager.conf"
SCHEDULER_CONF = f"{CONFIG_DIR}/scheduler.conf"
ADMIN_CONF = f"{CONFIG_DIR}/admin.conf"
IDENTITY_WEBHOOK_CONF = f"{CONFIG_DIR}/mzk-identity-webhook.conf"
WEBHOOK_CACHE_TTL = "30s"  # an authenticated node's token is reviewed again after this
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259

ANONYMOUS_PATHS = ("/livez", "/readyz", "/healthz")


@dataclass(frozen=True)
class ConfigFile:
    path: str
    content: bytes
    mode: int


def authentication_config() -> bytes:
    paths = "".join(f"  - path: {p}\n" for p in ANONYMOUS_PATHS)
    return ("apiVersion: apiserver.config.k8s.io/v1\n"
            "kind: AuthenticationConfiguration\n"
            "# Anonymous requests only for health checks; every other one is refused.\n"
            "anonymous:\n"
            "  enabled: true\n"
            "  conditions:\n" + paths).encode()


def identity_webhook_config() -> bytes:
    """The kubeconfig the API server reaches the identity webhook with: plain HTTP, since it
    never leaves the host (the approver listens on loopback only)."""
    server = f"http://{WEBHOOK_HOST}:{WEBHOOK_PORT}{WEBHOOK_PATH}"
    return ("apiVersion: v1\nkind: Config\n"
            "# TokenReview for joining nodes' identity tokens (bootstrap.node.identity_webhook)\n"
            f"clusters:\n- name: mzk-identity\n  cluster:\n    server: {server}\n"
            "users:\n- name: kube-apiserver\n  user: {}\n"
            "contexts:\n- name: webhook\n  context: {cluster: mzk-identity, user: kube-apiserver}\n"
            "current-context: webhook\n").encode()


def minor(version: str) -> str:
    """"1.36.2" -> "v1.36": the Pod Security policy version."""
    major, minor_, _ = version.split(".")
    return f"v{major}.{minor_}"


def admission_config(kubernetes_version: str) -> bytes:
    v = minor(kubernetes_version)
    return ("apiVersion: apiserver.config.k8s.io/v1\n"
            "kind: AdmissionConfiguration\n"
            "plugins:\n"
            "- name: PodSecurity\n"
            "  configuration:\n"
            "    apiVersion: pod-security.admission.config.k8s.io/v1\n"
            "    kind: PodSecurityConfiguration\n"
            "    # Cluster defaults for namespaces without labels (seed 004, part 4).\n"
            "    defaults:\n"
            "      enforce: baseline\n"
            f"      enforce-version: {v}\n"
            "      audit: restricted\n"
            f"      audit-version: {v}\n"
            "      warn: restricted\n"
            f"      warn-version: {v}\n"
            "    # No exemptions: kube-system is privileged by its namespace labels instead.\n"
            "    exemptions:\n"
            "      usernames: []\n"
            "      runtimeClasses: []\n"
            "      namespaces: []\n").encode()


AUDIT_POLICY_TEXT = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
# Health checks and the version: no record (load balancers call them every few seconds).
- level: None
  nonResourceURLs: [/healthz*, /livez*, /readyz*, /version]
# Leader election renewals of the control plane's own leases.
- level: None
  verbs: [get, update]
  resources: [{group: coordination.k8s.io, resources: [leases]}]
  namespaces: [kube-system, kube-node-lease]
# Events are records already.
- level: None
  resources: [{group: "", resources: [events]}, {group: events.k8s.io, resources: [events]}]
# Secrets, ConfigMaps and tokens: who and what, never the content.
- level: Metadata
  resources:
  - {group: "", resources: [secrets, configmaps, serviceaccounts/token]}
  - {group: authentication.k8s.io, resources: [tokenreviews]}
# Every other change with its request body; reads as metadata.
- level: Request
  verbs: [create, update, patch, delete, deletecollection]
- level: Metadata
"""


def encryption_config(keys: list[tuple[str, str]]) -> bytes:
    """`keys`: (name, base64 32-byte secret), the first one encrypts; all decrypt."""
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "- resources: [secrets]", "  providers:", "  - secretbox:",
             "      keys:"]
    for name, secret in keys:
        lines += [f"      - name: {name}", f"        secret: {secret}"]
    lines += ["  - identity: {}", ""]
    return "\n".join(lines).encode()


def inflight_limits(max_nodes: int) -> tuple[int, int]:
    """(--max-requests-inflight, --max-mutating-requests-inflight) per API server.

    The rule: the upstream defaults (400, 200) up to ~670 nodes; above that, 0.6 reads a
    node, mutating a third of that, up to the (3000, 1000) that Kubernetes' own
    5,000-node scalability runs use. With priority and fairness on (the default) their sum
    is the server's total concurrency.
    """
    reads = min(3000, max(400, round(0.6 * max_nodes)))
    return reads, min(1000, max(200, reads // 3))


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def files(inventory: Inventory, encryption: bytes) -> list[ConfigFile]:
    """The API server's configuration files (the same on every control-plane host)."""
    found = [
        ConfigFile(AUTHENTICATION, authentication_config(), 0o644),
        ConfigFile(ADMISSION, admission_config(inventory.cluster.kubernetes_version), 0o644),
        ConfigFile(AUDIT_POLICY, AUDIT_POLICY_TEXT.encode(), 0o644),
        ConfigFile(ENCRYPTION, encryption, 0o600),
        ConfigFile(hostconfig.SELECTOR, hostconfig.selector_config(), 0o644),
    ]
    if inventory.node_pools:
        found.append(ConfigFile(IDENTITY_WEBHOOK_CONF, identity_webhook_config(), 0o644))
    return found


def identity_webhook_flags(inventory: Inventory) -> list[str]:
    """With node pools: the approver's webhook reviews joining nodes' identity tokens."""
    if not inventory.node_pools:
        return []
    return [f"--authentication-token-webhook-config-file={IDENTITY_WEBHOOK_CONF}",
            "--authentication-token-webhook-version=v1",
            f"--authentication-token-webhook-cache-ttl={WEBHOOK_CACHE_TTL}"]


def apiserver_command(inventory: Inventory, host: Host, binary: str, etcd_servers: str,
                      etcd_overrides: str) -> list[str]:
    """`etcd_servers` and `etcd_overrides`: from `bootstrap.steps.etcd`, which owns the
    etcd clusters' ports."""
    c = inventory.cluster
    reads, mutating = inflight_limits(c.max_nodes)
    return [
        binary,
        f"--advertise-address={host.advertise_address}",
        f"--bind-address={host.address}",
        f"--secure-port={c.api_port}",
        f"--etcd-servers={etcd_servers}",
        f"--etcd-servers-overrides={etcd_overrides}",
        *flag_words("kube-apiserver", inventory.pki.ca_keys_on_hosts),
        f"--requestheader-allowed-names={LEAF_BY_NAME['front-proxy-client'].cn}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--service-account-issuer={inventory.regional_endpoint.url}",
        f"--service-cluster-ip-range={c.service_cidr}",
        "--authorization-mode=Node,RBAC",
        *identity_webhook_flags(inventory),  # joining nodes (bootstrap.node.join)
        "--enable-admission-plugins=NodeRestriction,PodSecurity",
        f"--admission-control-config-file={ADMISSION}",
        f"--authentication-config={AUTHENTICATION}",
        f"--encryption-provider-config={ENCRYPTION}",
        f"--audit-policy-file={AUDIT_POLICY}",
        f"--audit-log-path={AUDIT_LOG}",
        "--audit-log-maxage=30",
        "--audit-log-maxbackup=10",
        "--audit-log-maxsize=100",
        f"--max-requests-inflight={reads}",
        f"--max-mutating-requests-inflight={mutating}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--egress-selector-config-file={hostconfig.SELECTOR}",
        "--allow-privileged=true",
        "--profiling=false",
        "--tls-min-version=VersionTLS12",
    ]


def controller_manager_command(inventory: Inventory, binary: str) -> list[str]:
    c = inventory.cluster
    return [
        binary,
        f"--kubeconfig={CONTROLLER_MANAGER_CONF}",
        f"--authentication-kubeconfig={CONTROLLER_MANAGER_CONF}",
        f"--authorization-kubeconfig={CONTROLLER_MANAGER_CONF}",
        *flag_words("kube-controller-manager", inventory.pki.ca_keys_on_hosts),
        "--bind-address=127.0.0.1",
        f"--secure-port={CONTROLLER_MANAGER_PORT}",
        "--leader-elect=true",
        "--use-service-account-credentials=true",
        "--controllers=*,bootstrapsigner,tokencleaner",
        f"--cluster-name={c.name}",
        f"--service-cluster-ip-range={c.service_cidr}",
        f"--cluster-cidr={c.pod_cidr}",
        "--allocate-node-cidrs=true",
        "--profiling=false",
    ]


def scheduler_command(binary: str) -> list[str]:
    return [
        binary,
        f"--kubeconfig={SCHEDULER_CONF}",
        f"--authentication-kubeconfig={SCHEDULER_CONF}",
        f"--authorization-kubeconfig={SCHEDULER_CONF}",
        "--bind-address=127.0.0.1",
        f"--secure-port={SCHEDULER_PORT}",
        "--leader-elect=true",
        "--profiling=false",
    ]


def readyz_url(inventory: Inventory, host: Host) -> str:
    return f"https://{_bracket(host.address)}:{inventory.cluster.api_port}/readyz"
