"""What a `pulumi up` would re-bootstrap, read from the bootstrap resource's inputs alone.

The bootstrap resource's `check` runs on every preview, often where no SSH key and no route
to the hosts exist (CI). So its `plan` input is not a look at the hosts (that is `python -m
bootstrap plan`'s job) but a deterministic list of what changed between the inputs of the
last `up` and this one: hosts added, removed or changed, cluster settings changed, PKI files
issued, renewed or removed. Equal inputs give `[]`, which is what a converged stack shows.

Lines read like `python -m bootstrap plan`'s, prefixed with where the change is:

    inventory: hosts[mz-prod-cp-d1]: added (eu-west-1a, 10.0.16.25, control-plane, etcd)
    inventory: cluster.kubernetes_version: 1.36.0 -> 1.36.1
    pki: mz-prod-cp-a1: 2 renewed (etcd-server: expires in 20 days; ...)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from bootstrap.pki.issue import PKIResult

# A value longer than this (a host key, a certificate) is shown as changed, not printed.
_SHOWN = 48
_LOCAL = "local"


def _label(item: Any) -> str | None:
    """The name that keys a list item (hosts, zones, node pools), if it has one."""
    if isinstance(item, Mapping) and isinstance(item.get("name"), str):
        return str(item["name"])
    return None


def _flatten(value: Any, where: str, out: dict[str, Any]) -> None:
    """Leaves by dotted path; lists of named mappings are keyed by name (`hosts[cp-a]`),
    so a reordered list is no change and a new host is one added item."""
    if isinstance(value, Mapping) and value:
        for key in sorted(value, key=str):
            _flatten(value[key], f"{where}.{key}" if where else str(key), out)
        return
    if isinstance(value, list) and value and all(_label(v) for v in value):
        labels = [_label(v) for v in value]
        if len(set(labels)) == len(labels):
            for item in value:
                _flatten(item, f"{where}[{_label(item)}]", out)
            return
    out[where] = value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _short(*texts: str) -> bool:
    return all(len(t) <= _SHOWN for t in texts)


def _items(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`hosts[cp-a].address` -> {"hosts[cp-a]": {"address": ...}}: named items by path."""
    found: dict[str, dict[str, Any]] = {}
    for path, value in flat.items():
        head, sep, rest = path.partition("].")
        if sep and "[" in head:
            found.setdefault(head + "]", {})[rest] = value
        elif path.endswith("]"):
            found.setdefault(path, {})[""] = value
    return found


def _summary(item: Mapping[str, Any]) -> str:
    """A host's zone, address and roles; another item's fields, briefly."""
    shown = [item[k] for k in ("zone", "address") if isinstance(item.get(k), str)]
    roles = [v for k, v in sorted(item.items()) if k.startswith("roles")]
    if roles and isinstance(roles[0], list):
        shown += [str(r) for r in roles[0]]
    return f" ({', '.join(shown)})" if shown else ""


def inventory_changes(old: Any, new: Any) -> list[str]:
    """One line per changed setting, host or pool between two inventories (sorted)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old, "", before)
    _flatten(new, "", after)
    old_items, new_items = _items(before), _items(after)
    lines = []
    for item in sorted(set(old_items) | set(new_items)):
        if item not in old_items:
            lines.append(f"inventory: {item}: added{_summary(new_items[item])}")
        elif item not in new_items:
            lines.append(f"inventory: {item}: removed")
    whole = set(old_items) ^ set(new_items)  # added or removed: one line each, above
    for path in sorted(set(before) | set(after)):
        if any(path == i or path.startswith(i + ".") for i in whole):
            continue
        if path not in before:
            shown = _show(after[path])
            lines.append(f"inventory: {path}: " + (f"set to {shown}" if _short(shown)
                                                    else "set"))
        elif path not in after:
            lines.append(f"inventory: {path}: removed")
        elif before[path] != after[path]:
            was, now = _show(before[path]), _show(after[path])
            lines.append(f"inventory: {path}: " + (f"{was} -> {now}" if _short(was, now)
                                                    else "changed"))
    return lines


def _files(bundle: Mapping[str, Any]) -> dict[str, Any]:
    files = bundle.get("files")
    return dict(files) if isinstance(files, Mapping) else {}


def pki_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                result: PKIResult | None = None) -> list[str]:
    """One line per PKI owner (a host, or `local`: the CAs, admin.conf, the encryption
    and tunnel keys) whose files differ between two bundles, with the reasons the PKI
    generator gave for re-issuing (a renewal window, changed names)."""
    before, after = _files(old), _files(new)
    counts: dict[str, dict[str, int]] = {}
    for path in set(before) | set(after):
        owner = path.split("/", 1)[0]
        kind = ("issued" if path not in before else "removed" if path not in after
                else "renewed" if before[path] != after[path] else "")
        if kind:
            counts.setdefault(owner, {}).setdefault(kind, 0)
            counts[owner][kind] += 1
    reasons: dict[str, Iterable[str]] = {}
    if result is not None:
        reasons = {name: found.issued for name, found in result.hosts.items()}
        reasons[_LOCAL] = result.local.issued
    lines = []
    for owner in sorted(counts):
        what = ", ".join(f"{counts[owner][k]} {k}" for k in ("issued", "renewed", "removed")
                         if k in counts[owner])
        # "kube-apiserver: new" only repeats "issued"; renewals say why (a window, names).
        why = "; ".join(sorted(r for r in reasons.get(owner, ()) if not r.endswith(": new")))
        lines.append(f"pki: {owner}: {what}" + (f" ({why})" if why else ""))
    return lines
