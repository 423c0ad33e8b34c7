"""Issue, keep or re-issue the cluster PKI in a directory, host by host, idempotently.

Layout of the output directory (the operator's state; keep it safe, it holds CA keys):

    DIR/local/pki/...           the CAs and sa.key/sa.pub: the source every run starts from
    DIR/local/admin.conf        the operator's admin kubeconfig, for the regional endpoint
    DIR/<host>/<absolute path>  exactly the files that host receives, e.g.
                                DIR/cp-a/etc/kubernetes/pki/etcd/server.crt

A run keeps every existing file that still fits the table, re-issues the rest (missing,
SANs/CN/O/key/usages changed, inside the renewal window), writes only what changed
(temp file + rename), and removes files a host should no longer hold (a CA key when
`ca_keys_on_hosts` is turned off, hosts gone from the inventory). A leaf signed by a
different CA of the same name is an error: silently re-issuing would hide a replaced CA.
Hosts are processed in parallel processes: key generation is the cost, RSA above all.

The writer writes only what it owns, only where it was asked (`bootstrap.pki.files`): DIR
must be new, empty, or a PKI directory (one with local/manifest.json); nothing under it is
reached through a symbolic link; only files the table names (and our own temporary files)
are ever removed, and only from host directories whose names the manifest lists and the
inventory's name rule accepts.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import re
import stat
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from bootstrap.errors import ConfigError, PKIError
from bootstrap.inventory import Host, Inventory
from bootstrap.pki import certs, files, kubeconfig
from bootstrap.pki.authority import CAMaterial, ensure_cas, ensure_sa, is_new
from bootstrap.pki.files import PRIVATE_DIR_MODE, PUBLIC_DIR_MODE, Tree
from bootstrap.pki.layout import CERT_MODE, KEY_MODE, LOCAL, MANIFEST_PATH
from bootstrap.pki.table import (
    CA,
    CAS,
    CONTROL_PLANE,
    ETCD,
    KUBECONFIG_CA,
    KUBECONFIGS,
    LEAVES,
    NODE,
    OPERATOR_ADMIN,
    SA_KEY,
    SA_PUB,
    Context,
    Kubeconfig,
    Leaf,
)

MAX_WORKERS = 256  # key generation in more processes than that is a typo, not a plan
# The inventory's rule for host names (an RFC 1123 label): a name read back from the
# manifest must pass it before it may name a directory to remove.
HOST_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")

# Every file is written by `Tree.write`, the one atomic writer; this is its entry for a
# single path (bootstrap.control_plane.encryption writes DIR/local/encryption-keys.yaml so).
_write = files.write


@dataclass(frozen=True)
class HostFile:
    """One file a host receives: absolute path on the host, bytes, mode."""

    path: str
    content: bytes
    mode: int


@dataclass(frozen=True)
class HostPKI:
    host: str
    files: tuple[HostFile, ...]
    issued: tuple[str, ...] = ()  # "kube-apiserver: SANs differ"
    written: tuple[str, ...] = ()  # paths under DIR that changed
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


@dataclass(frozen=True)
class PKIResult:
    out_dir: Path
    local: HostPKI
    hosts: dict[str, HostPKI] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.local.changed or any(h.changed for h in self.hosts.values())


# --------------------------------------------------------------------------- public API


def generate(inventory: Inventory, out_dir: str | Path, *, now: dt.datetime | None = None,
             workers: int | None = None, rotate_sa_key: bool = False) -> PKIResult:
    """Bring DIR up to date with the inventory; see the module docstring. New CAs and a new
    service-account key only for a new PKI (`authority`), or the latter on purpose
    (`rotate_sa_key`)."""
    now = now or dt.datetime.now(dt.UTC)
    workers = check_workers(workers)
    if any(h.name == LOCAL for h in inventory.hosts):
        raise ConfigError(f"{inventory.source}: hosts: the host name {LOCAL!r} is reserved for "
                          "the operator's own files; rename that host")
    root = open_out(out_dir)
    try:
        with root:
            return _generate(inventory, root, now, workers, rotate_sa_key)
    except OSError as err:  # a full disk, a permission taken away mid-run
        where = f" ({err.filename})" if err.filename else ""
        raise PKIError(f"{root.path}: {err.strerror or err}{where}; fix that and run again "
                       "(what was written is kept, the rest follows)") from err


def _generate(inventory: Inventory, root: Tree, now: dt.datetime, workers: int,
              rotate_sa_key: bool) -> PKIResult:
    previous = _previous_hosts(root)  # refuses a foreign directory before anything changes
    new = is_new(root)
    root.claim(PRIVATE_DIR_MODE)
    current = {h.name for h in inventory.hosts}
    local_written: list[str] = []
    # Hosts about to be written are listed first: a run cut short leaves a directory that
    # the next run still recognises, and whose hosts it still owns.
    _write_manifest(root, previous | current)
    key_spec = certs.KeySpec(inventory.pki.key_type, inventory.pki.rsa_bits)
    # The service-account pair before the CAs: a new PKI's kubernetes-ca comes last.
    sa_key_pem, sa_pub_pem = ensure_sa(root, key_spec, local_written, new=new,
                                       rotate=rotate_sa_key, now=now)
    cas, warnings = ensure_cas(root, inventory, key_spec, now, local_written, new=new)

    job = _Job(inventory=inventory, root=root, cas=cas, sa_key_pem=sa_key_pem,
               sa_pub_pem=sa_pub_pem, key_spec=key_spec, now=now)
    hosts = _run_hosts(job, [h.name for h in inventory.hosts], workers)

    # The operator's admin kubeconfig, for the regional endpoint (seed 003).
    admin = f"{LOCAL}/admin.conf"
    admin_conf, reason = job.kubeconfig_bytes(root, admin, OPERATOR_ADMIN,
                                              inventory.regional_endpoint.url, None)
    if root.write(admin, admin_conf, KEY_MODE):
        local_written.append(root.full(admin))
    removed, kept = _remove_departed_hosts(root, previous - current)
    warnings += kept
    _write_manifest(root, current)
    local = HostPKI(host=LOCAL, files=(), written=tuple(local_written), removed=tuple(removed),
                    issued=(f"admin.conf: {reason}",) if reason else ())
    return PKIResult(out_dir=Path(root.path), local=local, hosts=hosts,
                     warnings=tuple(warnings))


def check_workers(workers: int | None) -> int:
    """The number of worker processes: default one per core, else 1..MAX_WORKERS."""
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or \
            not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers: {workers!r} is not between 1 and {MAX_WORKERS}; give "
                          "a process count such as the number of cores, or leave it out")
    return workers


def open_out(out_dir: str | Path) -> Tree:
    """DIR, made if missing, opened without following a link. Refused, with one line and
    nothing changed: an empty name, a link, a file, a path under a file, a place that cannot
    be written. (Whether an existing DIR is a PKI directory is `_previous_hosts`'s question.)
    """
    if not os.fspath(out_dir):
        raise ConfigError("--out: empty; name the PKI directory, e.g. --out ./pki")
    path = str(Path(out_dir))  # "pki/" -> "pki", as the paths in messages and results show
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError as err:
        raise ConfigError(f"{path}: {_file_above(path)} is a file, so nothing can be made "
                          "under it; give a directory path for the PKI") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be inspected ({err.strerror}); give another "
                          "directory for the PKI") from err
    if st is None:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile: checked below like any existing one
        except OSError as err:
            raise ConfigError(f"{path}: cannot be created ({err.strerror}); give a directory "
                              "you can write to") from err
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{path}: is a symbolic link; give the directory itself "
                          f"({os.path.realpath(path)}): the PKI never follows links")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: is a file, not a directory; give a directory for the PKI")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: not writable; give a directory you can write to")
    try:
        return Tree.open(path, private=frozenset({"pki", LOCAL}))
    except PKIError as err:  # replaced by a link or a file since the check above
        raise ConfigError(str(err)) from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be opened ({err.strerror}); give a directory you "
                          "can write to") from err


def _file_above(path: str) -> str:
    """The first component of `path` that exists and is not a directory."""
    parts = Path(path).parents
    for parent in reversed(parts):
        if os.path.lexists(parent) and not os.path.isdir(parent):
            return str(parent)
    return str(Path(path).parent)


def _previous_hosts(root: Tree) -> set[str]:
    """The hosts of the manifest; an empty DIR is a new PKI. A DIR with anything in it but
    without our manifest is not ours to write into (let alone to clean up): refused."""
    if not root.names(""):
        return set()
    where = root.full(MANIFEST_PATH)
    data = root.read(MANIFEST_PATH)  # a link at local/ or at the manifest is refused
    if data is None:
        raise ConfigError(f"{root.path}: not empty and not a PKI directory (no "
                          f"{MANIFEST_PATH}); give a new or empty directory, or the "
                          "directory of an earlier `pki` run. Nothing was changed")
    try:
        names = json.loads(data)["hosts"]
        if not isinstance(names, list):
            raise TypeError("hosts is not a list")
    except (ValueError, KeyError, TypeError) as err:
        raise PKIError(f"{where}: not a PKI manifest ({err}); restore it, or write "
                       '{"hosts": []} if the directory holds only this PKI. Nothing was '
                       "changed") from err
    for i, name in enumerate(names):
        if not isinstance(name, str) or name == LOCAL or not HOST_NAME.match(name):
            raise PKIError(f"{where}: hosts[{i}]: {name!r} is not a host name (lower-case "
                           "letters, digits, '-'); restore the manifest. Nothing was changed")
    return set(names)


def _write_manifest(root: Tree, hosts: set[str]) -> None:
    root.write(MANIFEST_PATH, json.dumps({"hosts": sorted(hosts)}, indent=1).encode() + b"\n",
               CERT_MODE)


def files_of(host: Host, inventory: Inventory) -> list[tuple[str, int]]:
    """(path, mode) of every file a host receives, without generating anything."""
    paths: list[tuple[str, int]] = []
    for ca in _cas_for(host, inventory):
        paths.append((ca.cert_path, CERT_MODE))
        if _ca_key_goes_to(ca, host, inventory):
            paths.append((ca.key_path, KEY_MODE))
    if host.has(CONTROL_PLANE):
        paths += [(SA_KEY, KEY_MODE), (SA_PUB, CERT_MODE)]
    for leaf in _leaves_for(host, inventory):
        paths += [(leaf.cert_path, CERT_MODE), (leaf.key_path, KEY_MODE)]
    paths += [(kc.path, KEY_MODE) for kc in _kubeconfigs_for(host)]
    return paths


# --------------------------------------------------------------------------- what goes where


def _has_any(host: Host, roles: Iterable[str]) -> bool:
    return any(host.has(r) for r in roles)


def _in_mode(row: Leaf | CA, inventory: Inventory) -> bool:
    """Rows of one egress mode (Konnectivity's) go to hosts only in that mode."""
    return row.egress is None or row.egress == inventory.cluster.egress


def _leaves_for(host: Host, inventory: Inventory) -> list[Leaf]:
    return [leaf for leaf in LEAVES
            if _has_any(host, leaf.roles) and _in_mode(leaf, inventory)]


def _kubeconfigs_for(host: Host) -> list[Kubeconfig]:
    return [kc for kc in KUBECONFIGS if _has_any(host, kc.roles)]


def _cas_for(host: Host, inventory: Inventory) -> list[CA]:
    """Control-plane hosts hold every CA; etcd hosts the etcd CA; nodes the cluster CA (and
    the Konnectivity CA, which control-plane hosts and nodes hold only in that mode)."""
    names = set()
    if host.has(CONTROL_PLANE):
        names |= {ca.name for ca in CAS}
    if host.has(ETCD):
        names.add("etcd-ca")
    if host.has(NODE):
        names |= {"kubernetes-ca", "konnectivity-ca"}
    return [ca for ca in CAS if ca.name in names and _in_mode(ca, inventory)]


def _ca_key_goes_to(ca: CA, host: Host, inventory: Inventory) -> bool:
    return inventory.pki.ca_keys_on_hosts and host.has(CONTROL_PLANE) and ca.key_on_hosts


# --------------------------------------------------------------------------- per host work


@dataclass
class _Job:
    """Everything a worker needs; reaches each worker process by fork (with DIR's open
    descriptor, so that workers too reach every path from it)."""

    inventory: Inventory
    root: Tree
    cas: dict[str, CAMaterial]
    sa_key_pem: bytes
    sa_pub_pem: bytes
    key_spec: certs.KeySpec
    now: dt.datetime

    @property
    def renew_before(self) -> dt.timedelta:
        return dt.timedelta(days=self.inventory.pki.renew_before_days)

    def host(self, name: str) -> HostPKI:
        host = self.inventory.host(name)
        tree = self.root.sub(host.name, create=True, own_mode=PUBLIC_DIR_MODE)
        assert tree is not None
        with tree:
            return self._host(host, tree)

    def _host(self, host: Host, tree: Tree) -> HostPKI:
        ctx = Context(inventory=self.inventory, host=host)
        files: list[HostFile] = []
        issued: list[str] = []

        for ca in _cas_for(host, self.inventory):
            material = self.cas[ca.name]
            files.append(HostFile(ca.cert_path, material.trust_pem, CERT_MODE))
            if _ca_key_goes_to(ca, host, self.inventory):
                if material.key_pem is None:
                    raise PKIError(f"{ca.name}: pki.ca_keys_on_hosts is true but the CA key is "
                                   "not in local/pki; restore it or set ca_keys_on_hosts: false")
                files.append(HostFile(ca.key_path, material.key_pem, KEY_MODE))
        if host.has(CONTROL_PLANE):
            files += [HostFile(SA_KEY, self.sa_key_pem, KEY_MODE),
                      HostFile(SA_PUB, self.sa_pub_pem, CERT_MODE)]
        for leaf in _leaves_for(host, self.inventory):
            cert_pem, key_pem, reason = self.leaf_bytes(tree, leaf, ctx)
            if reason:
                issued.append(f"{leaf.name}: {reason}")
            files += [HostFile(leaf.cert_path, cert_pem, CERT_MODE),
                      HostFile(leaf.key_path, key_pem, KEY_MODE)]
        for kc in _kubeconfigs_for(host):
            server = (self.inventory.zone(host.zone).endpoint.url if kc.endpoint == "zone"
                      else _url(host.address, self.inventory.cluster.api_port))
            content, reason = self.kubeconfig_bytes(tree, _rel(kc.path), kc, server, host)
            if reason:
                issued.append(f"{kc.file}: {reason}")
            files.append(HostFile(kc.path, content, KEY_MODE))

        written = [tree.full(_rel(f.path)) for f in files
                   if tree.write(_rel(f.path), f.content, f.mode)]
        removed = [] if tree.made else _remove_others(tree, {_rel(f.path) for f in files})
        return HostPKI(host=host.name, files=tuple(files), issued=tuple(issued),
                       written=tuple(written), removed=tuple(removed))

    def leaf_bytes(self, tree: Tree, leaf: Leaf, ctx: Context) -> tuple[bytes, bytes, str]:
        """(cert PEM, key PEM, why it was issued or '' if kept)."""
        cert_rel, key_rel = _rel(leaf.cert_path), _rel(leaf.key_path)
        old_cert = None if tree.made else tree.read(cert_rel)
        old_key = None if tree.made else tree.read(key_rel)
        cn = leaf.common_name(ctx.host)
        return self.reuse_or_issue(
            tree.full(cert_rel), old_cert, old_key, ca_name=leaf.ca, cn=cn, orgs=leaf.orgs,
            kinds=leaf.kinds, sans=leaf.sans(ctx))

    def kubeconfig_bytes(self, tree: Tree, rel: str, kc: Kubeconfig, server: str,
                         host: Host | None) -> tuple[bytes, str]:
        old = None if tree.made else tree.read(rel)
        old_cert = old_key = None
        if old is not None:
            try:
                old_cert, old_key = kubeconfig.credentials(old)
            except ValueError:
                pass
        cn = kc.common_name(host) if host else kc.cn
        cert_pem, key_pem, reason = self.reuse_or_issue(
            tree.full(rel), old_cert, old_key, ca_name=KUBECONFIG_CA, cn=cn, orgs=kc.orgs,
            kinds=("client",), sans=certs.SANs())
        ca = self.cas[KUBECONFIG_CA]
        return kubeconfig.render(server, kc.credential, ca.trust_pem, cert_pem, key_pem), reason

    def reuse_or_issue(self, where: Path | str, old_cert: bytes | None, old_key: bytes | None, *,
                       ca_name: str, cn: str, orgs: tuple[str, ...], kinds: tuple[str, ...],
                       sans: certs.SANs) -> tuple[bytes, bytes, str]:
        ca = self.cas[ca_name]
        key: certs.PrivateKey | None = None
        if old_cert is None or old_key is None:
            reason = "new"
        else:
            try:
                cert = x509.load_pem_x509_certificate(old_cert)
                key = certs.load_key(old_key)
            except ValueError:
                reason, key = "unreadable", None
            else:
                trusted = ca.trusted or (ca.cert,)
                if cert.issuer == ca.cert.subject and not any(
                        certs.issued_by(cert, t) for t in trusted):
                    raise PKIError(
                        f"{where}: signed by a different {ca_name} than local/pki; the CA was "
                        "replaced. Restore the CA that signed it, or delete "
                        f"{os.path.dirname(where)} to re-issue deliberately")
                if not certs.issued_by(cert, ca.cert):  # a rotation's outgoing CA
                    found: str | None = f"signed by the outgoing {ca_name} (rotation)"
                else:
                    found = certs.why_stale(cert, key, cn=cn, orgs=orgs, kinds=kinds,
                                            sans=sans, ca_cert=ca.cert, key_spec=self.key_spec,
                                            now=self.now, renew_before=self.renew_before)
                if found is None:
                    return old_cert, old_key, ""
                reason = found
                if not certs.same_public_key(cert, key):
                    key = None  # a key that does not match is not one to keep
        if ca.key is None:
            raise PKIError(f"{where}: must be issued ({reason}) but the {ca_name} key is not "
                           "in local/pki (CA kept elsewhere); issue it with that CA and place "
                           "it here, or restore the CA key")
        if key is None or not certs.key_matches(key, self.key_spec):
            key = certs.new_key(self.key_spec)
        cert = certs.new_leaf(cn, orgs, kinds, sans, key, ca.cert, ca.key, self.now,
                              self.inventory.pki.validity_days)
        return certs.cert_pem(cert), certs.key_pem(key), reason


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _host_in_worker(name: str) -> HostPKI:
    assert _JOB is not None
    return _JOB.host(name)


SMALL_RERUN = 256  # hosts: a re-run of this many, mostly keeping files, is faster in-process


def _run_hosts(job: _Job, names: list[str], workers: int) -> dict[str, HostPKI]:
    workers = min(workers, len(names))
    # A re-run (every host's directory exists) mostly reads and keeps: starting worker
    # processes would cost more than it saves, for a cluster of ordinary size.
    rerun = len(names) <= SMALL_RERUN and set(names) <= set(job.root.names(""))
    if workers <= 1 or rerun:
        return {name: job.host(name) for name in names}
    chunk = max(1, len(names) // (workers * 8))
    # fork: the job (CA keys included) reaches workers without being written anywhere.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(job,)) as pool:
        return {r.host: r for r in pool.map(_host_in_worker, names, chunksize=chunk)}


# --------------------------------------------------------------------------- files


def _rel(absolute: str) -> str:
    """A host's absolute path as a path inside its directory: /etc/x -> etc/x."""
    return absolute.lstrip("/")


def _owned_by_dir() -> dict[str, frozenset[str]]:
    """directory (inside a host's directory) -> names of the files the table can put there:
    every file the PKI could have written for any host, whatever its roles."""
    paths = [SA_KEY, SA_PUB, *(p for ca in CAS for p in (ca.cert_path, ca.key_path)),
             *(p for leaf in LEAVES for p in (leaf.cert_path, leaf.key_path)),
             *(kc.path for kc in KUBECONFIGS)]
    owned: dict[str, set[str]] = {}
    for path in paths:
        directory, _, name = _rel(path).rpartition("/")
        owned.setdefault(directory, set()).add(name)
    return {directory: frozenset(names) for directory, names in owned.items()}


_OWNED = _owned_by_dir()
# Every directory the PKI makes inside a host's directory, deepest first.
_OWNED_DIRS = sorted({"/".join(d.split("/")[:i]) for d in _OWNED
                      for i in range(1, d.count("/") + 2)}, key=lambda d: -d.count("/"))


def _remove_others(tree: Tree, keep: set[str]) -> list[str]:
    """Remove the files under a host's directory that the table could have put there but
    the host should no longer receive (and our temporary files a crash left behind).
    Anything else (a file of the operator's, say) is not ours, and stays."""
    removed: list[str] = []
    for directory, owned in _OWNED.items():
        for name in tree.names(directory):
            rel = f"{directory}/{name}"
            if (name in owned and rel not in keep) or files.is_temp_of(name, owned):
                if tree.unlink(rel):  # refuses a link or a directory there
                    removed.append(tree.full(rel))
    return removed


def _remove_departed_hosts(root: Tree, departed: set[str]) -> tuple[list[str], list[str]]:
    """Hosts written last time but gone from the inventory lose their files and, once
    empty, their directories. The names come from our manifest, validated by
    `_previous_hosts`; what the PKI did not write stays, with a warning.
    Returns (removed paths, warnings)."""
    removed: list[str] = []
    warnings: list[str] = []
    for name in sorted(departed):
        assert HOST_NAME.match(name) and name != LOCAL, name  # _previous_hosts checked it
        tree = root.sub(name, create=False, own_mode=PUBLIC_DIR_MODE)
        if tree is None:
            continue
        with tree:
            gone = _remove_others(tree, set())
            for directory in _OWNED_DIRS:
                tree.rmdir_if_empty(directory)
        if root.rmdir_if_empty(name):
            removed.append(root.full(name))
        else:
            removed += gone
            warnings.append(f"{root.full(name)}: the host left the inventory, but its "
                            "directory holds files the PKI did not write; they were left in "
                            "place, remove the directory yourself once they are not needed")
    return removed, warnings
