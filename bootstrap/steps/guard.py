"""Two guards before anything on a host changes.

lock: one apply at a time per cluster (`bootstrap.apply_lock`), taken on every
control-plane host right after the facts; released by `execute` when the run ends. A plan
changes nothing and takes no lock.

trust: a host that already trusts a CA (its ca.crt, etcd/ca.crt, front-proxy-ca.crt) must
get the same CA key from this run's PKI directory. Another directory (an inventory copied
elsewhere, a wrong `--pki-dir`) would otherwise push brand-new CAs onto a live cluster and
cut every member off from the others; the run stops with one line naming the hosts and
both fingerprints, before any host changed. The file states come with the facts, so a
converged cluster costs no round trip; a CA re-signed with the same key passes.
"""

from __future__ import annotations

import hashlib
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bootstrap import apply_lock
from bootstrap.engine import HostContext, Step
from bootstrap.errors import ConfigError, LockBusy
from bootstrap.hostfiles import stat_many
from bootstrap.inventory import Host, Inventory
from bootstrap.pki.table import CAS
from bootstrap.ssh_runner import SSHRunner
from bootstrap.steps.pki import planned


def start_lock(ctx: HostContext) -> threading.Thread | None:
    """Called by the facts step on control-plane hosts: take this host's lock in a thread,
    over the same connection, while the facts command runs."""
    if ctx.dry_run or not ctx.host.has("control-plane") or not isinstance(ctx.runner,
                                                                           SSHRunner):
        return None
    owner = ctx.shared.setdefault("lock_owner", apply_lock.owner_line())
    results = ctx.shared.setdefault("lock_results", {})
    runner = ctx.runner

    def take() -> None:
        try:
            results[ctx.name] = apply_lock.HeldLock(runner, owner)
        except Exception as err:  # noqa: BLE001 - judged by the lock step
            results[ctx.name] = err

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def finish_lock(ctx: HostContext, thread: threading.Thread | None) -> None:
    if thread is not None:
        thread.join()


def take_lock(group: list[HostContext]) -> None:
    """Every control-plane host answered its lock (taken beside the facts), or the run
    stops: what was taken is released and LockBusy names the holder."""
    if not group or group[0].dry_run:
        return
    shared = group[0].shared
    results = shared.get("lock_results", {})
    held = [r for r in results.values() if isinstance(r, apply_lock.HeldLock)]
    shared.setdefault("locks", []).extend(held)
    busy = sorted(str(r) for r in results.values() if isinstance(r, LockBusy))
    missing = [c.runner for c in group if c.name not in results
               and isinstance(c.runner, SSHRunner)]
    if not busy and missing:  # hosts whose facts ran elsewhere: take their lock now
        try:
            shared["locks"].extend(apply_lock.acquire(missing, shared.get("lock_owner")))
        except LockBusy as err:
            busy = [str(err)]
    if busy:
        for lock in shared["locks"]:
            lock.release()
        shared["locks"].clear()
        more = f" (and {len(busy) - 1} more host(s))" if len(busy) > 1 else ""
        raise LockBusy(busy[0] + more)


def fingerprint(pem: bytes) -> str:
    """As `openssl x509 -noout -fingerprint -sha256` prints it."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _public_keys(pem: bytes) -> set[bytes]:
    """The keys of every certificate in a file (a CA bundle during a rotation)."""
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return set()
    return {c.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
            for c in found}


def check_trust(group: list[HostContext]) -> None:
    if not group or "pki" not in group[0].shared:
        return
    mismatches: dict[tuple[str, str, str], list[str]] = {}
    for ctx in group:
        files, _ = planned(ctx)
        ours = {f.path: f.content for f in files}
        paths = [ca.cert_path for ca in CAS if ca.cert_path in ours]
        known = ctx.facts.get("file_states") or {}
        states = ({p: known[p] for p in paths} if all(p in known for p in paths)
                  else stat_many(ctx.runner, paths))
        for ca in CAS:
            path = ca.cert_path
            state = states.get(path)
            if path not in ours or state is None:
                continue
            if state.split()[0] == hashlib.sha256(ours[path]).hexdigest():
                continue
            theirs = ctx.runner.read(path)
            # A CA the host trusts is still in ours (a rotation adds or retires one).
            if theirs is None or _public_keys(theirs) & _public_keys(ours[path]):
                continue
            try:
                their_print = fingerprint(theirs)
            except ValueError:
                their_print = "an unreadable certificate"
            mismatches.setdefault((ca.name, their_print, fingerprint(ours[path])),
                                  []).append(ctx.name)
    if not mismatches:
        return
    pki_dir = group[0].shared["pki"].out_dir
    (name, theirs_fp, ours_fp), hosts = sorted(mismatches.items())[0]
    more = f" (and {len(mismatches) - 1} more CA(s))" if len(mismatches) > 1 else ""
    raise ConfigError(
        f"{', '.join(sorted(hosts))} trust {name} {theirs_fp}, but the PKI directory "
        f"{pki_dir} holds {ours_fp}{more}: it is not this cluster's PKI; give --pki-dir the "
        "directory that issued the cluster's CA (rotating a CA is a separate, explicit "
        "operation); nothing was changed")


def _control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.control_plane


def _all(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.hosts


LOCK = Step("lock", _control_plane, run_together=take_lock)
TRUST = Step("trust", _all, run_together=check_trust)
