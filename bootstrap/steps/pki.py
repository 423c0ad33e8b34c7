"""Place the PKI: every host gets exactly the files `bootstrap.pki` issued for it, and
loses CA keys it must no longer hold (when `pki.ca_keys_on_hosts` is off)."""

from __future__ import annotations

from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.hostfiles import FileSpec, sync
from bootstrap.pki import PKIResult
from bootstrap.pki.table import CAS


def planned(ctx: HostContext) -> tuple[list[FileSpec], list[str]]:
    """(the files the host must hold, the CA keys it must not)."""
    result: PKIResult = ctx.shared["pki"]
    files = [FileSpec(f.path, f.content, f.mode) for f in result.hosts[ctx.name].files]
    held = {f.path for f in files}
    return files, [ca.key_path for ca in CAS if ca.key_path not in held]


def watched_paths(ctx: HostContext) -> list[str]:
    """Paths whose state the facts step gathers for this step (saving it a round trip)."""
    if "pki" not in ctx.shared:
        return []
    files, stray = planned(ctx)
    return [f.path for f in files] + stray


def place(ctx: HostContext) -> None:
    files, stray = planned(ctx)
    written, removed = sync(ctx.runner, files, dry_run=ctx.dry_run, absent=stray,
                            known=ctx.facts.get("file_states"))
    for path in written:
        ctx.note(f"write {path}")
    for path in removed:
        ctx.note(f"remove {path} (CA keys stay off this host)")


PLACE_PKI = Step("pki", all_hosts, run=place)
