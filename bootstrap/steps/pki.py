"""Place the PKI: every host gets exactly the files `bootstrap.pki` issued for it, and
loses CA keys it must no longer hold (when `pki.ca_keys_on_hosts` is off) and the files of
an egress mode the cluster left (Konnectivity's certificates after a switch to SSH
tunnels)."""

from __future__ import annotations

from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.hostfiles import FileSpec, sync
from bootstrap.pki import PKIResult
from bootstrap.pki.table import CA, CAS, LEAVES, Leaf

# Files that only one egress mode puts on hosts: removed where not issued.
_MODE_ROWS: list[CA | Leaf] = [*(c for c in CAS if c.egress), *(x for x in LEAVES if x.egress)]
_MODE_FILES = [p for row in _MODE_ROWS for p in (row.cert_path, row.key_path)]


def planned(ctx: HostContext) -> tuple[list[FileSpec], list[str]]:
    """(the files the host must hold, the CA keys it must not)."""
    result: PKIResult = ctx.shared["pki"]
    files = [FileSpec(f.path, f.content, f.mode) for f in result.hosts[ctx.name].files]
    held = {f.path for f in files}
    stray = dict.fromkeys([ca.key_path for ca in CAS] + _MODE_FILES)
    return files, [p for p in stray if p not in held]


def watched_paths(ctx: HostContext) -> list[str]:
    """Paths whose state the facts step gathers for this step (saving it a round trip)."""
    if "pki" not in ctx.shared:
        return []
    files, stray = planned(ctx)
    return [f.path for f in files] + stray


def place(ctx: HostContext) -> None:
    files, stray = planned(ctx)
    from bootstrap.steps.control_plane import deferred_pki  # control_plane imports facts

    deferred = deferred_pki(ctx)  # written in the host's own control-plane turn
    files = [f for f in files if f.path not in deferred]
    written, removed = sync(ctx.runner, files, dry_run=ctx.dry_run, absent=stray,
                            known=ctx.facts.get("file_states"))
    for path in written:
        ctx.note(f"write {path}")
    for path in removed:
        why = "CA keys stay off this host" if path.endswith(".key") and any(
            path == ca.key_path for ca in CAS) else "not used in this egress mode"
        ctx.note(f"remove {path} ({why})")


PLACE_PKI = Step("pki", all_hosts, run=place)
