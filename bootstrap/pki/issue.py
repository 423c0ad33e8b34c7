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
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import stat
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from bootstrap.errors import ConfigError, PKIError
from bootstrap.inventory import Host, Inventory
from bootstrap.pki import certs, kubeconfig
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

LOCAL = "local"  # DIR/local: the operator's own files, never a host's
MANIFEST = "manifest.json"  # DIR/local/manifest.json: the hosts written last time
KEY_MODE = 0o600
CERT_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


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


@dataclass(frozen=True)
class CAMaterial:
    spec: CA
    cert: x509.Certificate
    cert_pem: bytes
    key: certs.PrivateKey | None  # None: the key is kept elsewhere, leaves are only checked
    key_pem: bytes | None


# --------------------------------------------------------------------------- public API


def generate(inventory: Inventory, out_dir: str | Path, *, now: dt.datetime | None = None,
             workers: int | None = None) -> PKIResult:
    """Bring DIR up to date with the inventory; see the module docstring."""
    out = Path(out_dir)
    now = now or dt.datetime.now(dt.UTC)
    if any(h.name == LOCAL for h in inventory.hosts):
        raise ConfigError(f"{inventory.source}: hosts: the host name {LOCAL!r} is reserved for "
                          "the operator's own files; rename that host")
    local_written: list[str] = []
    local_files = out / LOCAL
    _make_parents(str(out))
    if not local_files.is_dir():
        local_files.mkdir(mode=PRIVATE_DIR_MODE)
    key_spec = certs.KeySpec(inventory.pki.key_type, inventory.pki.rsa_bits)
    cas, warnings = _ensure_cas(local_files / "pki", inventory, key_spec, now, local_written)
    sa_key_pem, sa_pub_pem = _ensure_sa(local_files / "pki", key_spec, local_written)

    job = _Job(inventory=inventory, out=out, cas=cas, sa_key_pem=sa_key_pem,
               sa_pub_pem=sa_pub_pem, key_spec=key_spec, now=now)
    hosts = _run_hosts(job, [h.name for h in inventory.hosts], workers)

    # The operator's admin kubeconfig, for the regional endpoint (seed 003).
    admin_conf, reason = job.kubeconfig_bytes(
        local_files / "admin.conf", OPERATOR_ADMIN, inventory.regional_endpoint.url, None)
    if _write(local_files / "admin.conf", admin_conf, KEY_MODE):
        local_written.append(str(local_files / "admin.conf"))
    removed = _remove_departed_hosts(out, {h.name for h in inventory.hosts})
    local = HostPKI(host=LOCAL, files=(), written=tuple(local_written), removed=tuple(removed),
                    issued=(f"admin.conf: {reason}",) if reason else ())
    return PKIResult(out_dir=out, local=local, hosts=hosts, warnings=tuple(warnings))


def files_of(host: Host, inventory: Inventory) -> list[tuple[str, int]]:
    """(path, mode) of every file a host receives, without generating anything."""
    paths: list[tuple[str, int]] = []
    for ca in _cas_for(host):
        paths.append((ca.cert_path, CERT_MODE))
        if inventory.pki.ca_keys_on_hosts and host.has(CONTROL_PLANE):
            paths.append((ca.key_path, KEY_MODE))
    if host.has(CONTROL_PLANE):
        paths += [(SA_KEY, KEY_MODE), (SA_PUB, CERT_MODE)]
    for leaf in _leaves_for(host):
        paths += [(leaf.cert_path, CERT_MODE), (leaf.key_path, KEY_MODE)]
    paths += [(kc.path, KEY_MODE) for kc in _kubeconfigs_for(host)]
    return paths


# --------------------------------------------------------------------------- what goes where


def _has_any(host: Host, roles: Iterable[str]) -> bool:
    return any(host.has(r) for r in roles)


def _leaves_for(host: Host) -> list[Leaf]:
    return [leaf for leaf in LEAVES if _has_any(host, leaf.roles)]


def _kubeconfigs_for(host: Host) -> list[Kubeconfig]:
    return [kc for kc in KUBECONFIGS if _has_any(host, kc.roles)]


def _cas_for(host: Host) -> list[CA]:
    """Control-plane hosts hold all three CAs; etcd hosts the etcd CA; nodes the cluster CA."""
    if host.has(CONTROL_PLANE):
        return list(CAS)
    names = set()
    if host.has(ETCD):
        names.add("etcd-ca")
    if host.has(NODE):
        names.add("kubernetes-ca")
    return [ca for ca in CAS if ca.name in names]


# --------------------------------------------------------------------------- CAs and SA key


def _ensure_cas(pki: Path, inventory: Inventory, key_spec: certs.KeySpec, now: dt.datetime,
                written: list[str]) -> tuple[dict[str, CAMaterial], list[str]]:
    cas: dict[str, CAMaterial] = {}
    warnings: list[str] = []
    for ca in CAS:
        crt_path, key_path = pki / f"{ca.base}.crt", pki / f"{ca.base}.key"
        if not crt_path.exists():
            if key_path.exists():
                raise PKIError(f"{key_path}: a CA key without its certificate {crt_path.name}; "
                               "restore the certificate or remove the key to start a new CA")
            key = certs.new_key(key_spec)
            cert = certs.new_ca(ca.name, key, now, inventory.pki.ca_validity_days)
            _write(key_path, certs.key_pem(key), KEY_MODE, durable=True)
            _write(crt_path, certs.cert_pem(cert), CERT_MODE, durable=True)
            written += [str(key_path), str(crt_path)]
        cas[ca.name] = _load_ca(ca, crt_path, key_path, now, warnings,
                                inventory.pki.renew_before_days)
    return cas, warnings


def _load_ca(ca: CA, crt_path: Path, key_path: Path, now: dt.datetime, warnings: list[str],
             renew_before_days: int) -> CAMaterial:
    try:
        cert_pem = crt_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise PKIError(f"{crt_path}: not a PEM certificate ({err}); restore the CA "
                       "certificate") from err
    facts = certs.facts(cert)
    if not facts.is_ca:
        raise PKIError(f"{crt_path}: not a CA certificate; restore the {ca.name} CA")
    if facts.cn != ca.name:
        raise PKIError(f"{crt_path}: CN is {facts.cn!r}, the table wants {ca.name!r}; "
                       "restore the right CA certificate")
    if facts.not_after <= now:
        raise PKIError(f"{crt_path}: the {ca.name} CA expired on {facts.not_after:%Y-%m-%d}; "
                       "rotate the CA (a new CA means new certificates on every host)")
    if facts.not_after - now <= dt.timedelta(days=renew_before_days):
        warnings.append(f"{crt_path}: the {ca.name} CA expires on {facts.not_after:%Y-%m-%d}; "
                        "plan a CA rotation")
    key = key_pem = None
    if key_path.exists():
        key_pem = key_path.read_bytes()
        try:
            key = certs.load_key(key_pem)
        except ValueError as err:
            raise PKIError(f"{key_path}: not a readable private key ({err}); restore it") \
                from err
        if not certs.same_public_key(cert, key):
            raise PKIError(f"{key_path}: does not match {crt_path.name}; restore the pair "
                           "that belongs together")
    return CAMaterial(spec=ca, cert=cert, cert_pem=cert_pem, key=key, key_pem=key_pem)


def _ensure_sa(pki: Path, key_spec: certs.KeySpec, written: list[str]) -> tuple[bytes, bytes]:
    """sa.key/sa.pub: the service-account signing pair. sa.pub always follows sa.key."""
    key_path, pub_path = pki / "sa.key", pki / "sa.pub"
    if key_path.exists():
        try:
            key = certs.load_key(key_path.read_bytes())
        except ValueError as err:
            raise PKIError(f"{key_path}: not a readable private key ({err}); restore it") \
                from err
    else:
        key = certs.new_key(key_spec)
        _write(key_path, certs.key_pem(key), KEY_MODE, durable=True)
        written.append(str(key_path))
    if _write(pub_path, certs.public_pem(key), CERT_MODE, durable=True):
        written.append(str(pub_path))
    return key_path.read_bytes(), certs.public_pem(key)


# --------------------------------------------------------------------------- per host work


@dataclass
class _Job:
    """Everything a worker needs; sent once to each worker process."""

    inventory: Inventory
    out: Path
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
        root = f"{self.out}/{host.name}"
        ctx = Context(inventory=self.inventory, host=host)
        files: list[HostFile] = []
        issued: list[str] = []

        for ca in _cas_for(host):
            material = self.cas[ca.name]
            files.append(HostFile(ca.cert_path, material.cert_pem, CERT_MODE))
            if self.inventory.pki.ca_keys_on_hosts and host.has(CONTROL_PLANE):
                if material.key_pem is None:
                    raise PKIError(f"{ca.name}: pki.ca_keys_on_hosts is true but the CA key is "
                                   "not in local/pki; restore it or set ca_keys_on_hosts: false")
                files.append(HostFile(ca.key_path, material.key_pem, KEY_MODE))
        if host.has(CONTROL_PLANE):
            files += [HostFile(SA_KEY, self.sa_key_pem, KEY_MODE),
                      HostFile(SA_PUB, self.sa_pub_pem, CERT_MODE)]
        for leaf in _leaves_for(host):
            cert_pem, key_pem, reason = self.leaf_bytes(root, leaf, ctx)
            if reason:
                issued.append(f"{leaf.name}: {reason}")
            files += [HostFile(leaf.cert_path, cert_pem, CERT_MODE),
                      HostFile(leaf.key_path, key_pem, KEY_MODE)]
        for kc in _kubeconfigs_for(host):
            server = (self.inventory.zone(host.zone).endpoint.url if kc.endpoint == "zone"
                      else _url(host.address, self.inventory.cluster.api_port))
            content, reason = self.kubeconfig_bytes(_under(root, kc.path), kc, server, host)
            if reason:
                issued.append(f"{kc.file}: {reason}")
            files.append(HostFile(kc.path, content, KEY_MODE))

        existed = os.path.isdir(root)
        written = [_under(root, f.path) for f in files
                   if _write(_under(root, f.path), f.content, f.mode)]
        removed = _remove_others(root, {f.path for f in files}) if existed else []
        return HostPKI(host=host.name, files=tuple(files), issued=tuple(issued),
                       written=tuple(written), removed=tuple(removed))

    def leaf_bytes(self, root: str, leaf: Leaf, ctx: Context) -> tuple[bytes, bytes, str]:
        """(cert PEM, key PEM, why it was issued or '' if kept)."""
        cert_file, key_file = _under(root, leaf.cert_path), _under(root, leaf.key_path)
        old_cert = _read(cert_file)
        old_key = _read(key_file)
        cn = leaf.common_name(ctx.host)
        cert_pem, key_pem, reason = self.reuse_or_issue(
            cert_file, old_cert, old_key, ca_name=leaf.ca, cn=cn, orgs=leaf.orgs,
            kinds=leaf.kinds, sans=leaf.sans(ctx))
        return cert_pem, key_pem, reason

    def kubeconfig_bytes(self, path: Path | str, kc: Kubeconfig, server: str,
                         host: Host | None) -> tuple[bytes, str]:
        old = _read(path)
        old_cert = old_key = None
        if old is not None:
            try:
                old_cert, old_key = kubeconfig.credentials(old)
            except ValueError:
                pass
        cn = kc.common_name(host) if host else kc.cn
        cert_pem, key_pem, reason = self.reuse_or_issue(
            path, old_cert, old_key, ca_name=KUBECONFIG_CA, cn=cn, orgs=kc.orgs,
            kinds=("client",), sans=certs.SANs())
        ca = self.cas[KUBECONFIG_CA]
        return kubeconfig.render(server, kc.credential, ca.cert_pem, cert_pem, key_pem), reason

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
                if cert.issuer == ca.cert.subject and not certs.issued_by(cert, ca.cert):
                    raise PKIError(
                        f"{where}: signed by a different {ca_name} than local/pki; the CA was "
                        "replaced. Restore the CA that signed it, or delete "
                        f"{os.path.dirname(where)} to re-issue deliberately")
                found = certs.why_stale(cert, key, cn=cn, orgs=orgs, kinds=kinds, sans=sans,
                                        ca_cert=ca.cert, key_spec=self.key_spec, now=self.now,
                                        renew_before=self.renew_before)
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


def _run_hosts(job: _Job, names: list[str], workers: int | None) -> dict[str, HostPKI]:
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(names) <= 1:
        return {name: job.host(name) for name in names}
    chunk = max(1, len(names) // (workers * 8))
    # fork: the job (CA keys included) reaches workers without being written anywhere.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(job,)) as pool:
        return {r.host: r for r in pool.map(_host_in_worker, names, chunksize=chunk)}


# --------------------------------------------------------------------------- files


def _under(root: Path | str, absolute: str) -> str:
    return f"{root}{absolute}"


def _read(path: Path | str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def _dir_mode(path: str) -> int:
    return PRIVATE_DIR_MODE if "/pki/" in path + "/" else 0o755


def _make_parents(directory: str) -> None:
    """mkdir -p, each new directory with its mode (0700 for pki directories)."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        os.mkdir(path)
        os.chmod(path, _dir_mode(path))  # mkdir's mode is filtered by the umask


def _write(path: Path | str, content: bytes, mode: int, durable: bool = False) -> bool:
    """Write if the bytes or mode differ; atomically (temp file in the same directory, then
    rename), created with its final mode so a key is never readable by others. True if
    anything changed. (Plain os calls: this runs tens of thousands of times per run.)"""
    name = str(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        st = None
    if st is not None and st.st_size == len(content):
        with open(name, "rb") as existing:
            same = existing.read() == content
        if same:
            if stat.S_IMODE(st.st_mode) == mode:
                return False
            os.chmod(name, mode)
            return True
    directory, base = os.path.split(name)
    tmp = f"{directory}/.{base}.tmp{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(tmp, flags, mode)
    except FileNotFoundError:  # first file of its directory: make the parents, once
        _make_parents(directory)
        fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name)
    return True


def _remove_others(root: str, keep: set[str]) -> list[str]:
    """Remove files under a host's directory that the host should no longer receive."""
    removed: list[str] = []
    prefix = len(root)
    pending = [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.path[prefix:] not in keep:
                    os.unlink(entry.path)
                    removed.append(entry.path)
    return removed


def _remove_departed_hosts(out: Path, current: set[str]) -> list[str]:
    """Hosts written last time but gone from the inventory lose their directory. Only
    directories listed in our manifest are touched, never anything else in DIR."""
    manifest = out / LOCAL / MANIFEST
    try:
        previous = set(json.loads(manifest.read_text())["hosts"])
    except (FileNotFoundError, ValueError, KeyError):
        previous = set()
    removed = []
    for name in sorted(previous - current):
        if name != LOCAL and (out / name).is_dir():
            shutil.rmtree(out / name)
            removed.append(str(out / name))
    _write(manifest, json.dumps({"hosts": sorted(current)}, indent=1).encode() + b"\n",
           CERT_MODE)
    return removed
