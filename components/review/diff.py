"""Two renders of a stack compared resource by resource and property by property.

Resources are matched by type and name (their URN within the stack, less the parent chain;
a changed parent is reported, since Pulumi then sees a new URN). Each changed property says
whether it makes AWS replace the resource (`replacement.FACTS`), whether Pulumi ignores it
(`ignoreChanges`), and what `protect` does to a replacement or a removal: the questions a
reviewer of an infrastructure pull request has to answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.review import replacement
from components.review.render import resource_lines, shown

MISSING = object()


@dataclass(frozen=True)
class PropertyChange:
    path: str
    old: Any
    new: Any
    replaces: str = ""  # why it forces replacement ("" when it does not)
    ignored: bool = False  # in the resource's ignoreChanges: Pulumi will not apply it


@dataclass(frozen=True)
class ResourceChange:
    key: str
    base: Mapping[str, Any]
    head: Mapping[str, Any]
    properties: tuple[PropertyChange, ...]
    urn_changed: bool = False

    @property
    def replaced(self) -> bool:
        return self.urn_changed or any(p.replaces and not p.ignored for p in self.properties)


@dataclass
class StackDiff:
    added: list[Mapping[str, Any]] = field(default_factory=list)
    removed: list[Mapping[str, Any]] = field(default_factory=list)
    changed: list[ResourceChange] = field(default_factory=list)
    outputs: list[PropertyChange] = field(default_factory=list)
    unknown_types: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.outputs)


def _top(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0]


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level input values of a flattened map (enough for the table's conditions)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        top = _top(path)
        out[top] = value if path == top else out.get(top) or True
    return out


def _ignored(path: str, ignore: list[str]) -> bool:
    return any(path == i or path.startswith((i + ".", i + "[")) for i in ignore)


def compare_resource(key: str, base: Mapping[str, Any],
                     head: Mapping[str, Any]) -> ResourceChange | None:
    old, new = base["inputs"], head["inputs"]
    old_top, new_top = _nest(old), _nest(new)
    changes = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path, MISSING), new.get(path, MISSING)
        if before == after:
            continue
        why = ""
        if _top(path) in head.get("replaceOnChanges", []):
            why = "replaceOnChanges in the program"
        else:
            rule = replacement.replacing(head["type"], path, old_top, new_top)
            if rule:
                why = rule.source + (f" (when {rule.when})" if rule.when else "") + \
                    ("" if rule.checked else " [unverified row]")
        changes.append(PropertyChange(path, before, after, why,
                                      _ignored(path, head.get("ignoreChanges", []))))
    urn_changed = bool(base.get("urn")) and base.get("urn") != head.get("urn")
    flags_changed = base.get("protect") != head.get("protect")
    if flags_changed:
        changes.append(PropertyChange("(protect)", base.get("protect"), head.get("protect")))
    if not changes and not urn_changed:
        return None
    return ResourceChange(key, base, head, tuple(changes), urn_changed)


def compare(base: Mapping[str, Any], head: Mapping[str, Any]) -> StackDiff:
    out = StackDiff()
    old, new = base.get("resources", {}), head.get("resources", {})
    for key in sorted(set(new) - set(old)):
        out.added.append(new[key])
    for key in sorted(set(old) - set(new)):
        out.removed.append(old[key])
    for key in sorted(set(old) & set(new)):
        change = compare_resource(key, old[key], new[key])
        if change:
            out.changed.append(change)
    _cascade(out, old, new)
    touched = [*out.added, *out.removed, *(c.head for c in out.changed)]
    out.unknown_types = {r["type"] for r in touched if not replacement.known(r["type"])}
    old_out, new_out = base.get("outputs", {}), head.get("outputs", {})
    for path in sorted(set(old_out) | set(new_out)):
        if old_out.get(path, MISSING) != new_out.get(path, MISSING):
            out.outputs.append(PropertyChange(path, old_out.get(path, MISSING),
                                              new_out.get(path, MISSING)))
    return out


def _cascade(out: StackDiff, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """A replaced resource gets new IDs: every input that refers to it changes too, and may
    force its own resource's replacement (an instance in a replaced subnet), and so on."""
    changes = {c.key: c for c in out.changed}
    replaced = {c.head.get("ref", c.head["name"]) for c in out.changed if c.replaced}
    done: set[str] = set()
    while replaced - done:
        name = sorted(replaced - done)[0]
        done.add(name)
        for key, res in new.items():
            if key not in old:
                continue
            current = changes.get(key)
            seen = {p.path for p in current.properties} if current else set()
            extra = []
            for path, value in res["inputs"].items():
                if path in seen or not (isinstance(value, str) and f"${{{name}." in value):
                    continue
                rule = replacement.replacing(res["type"], path, {}, _nest(res["inputs"]))
                why = rule.source if rule else ""
                extra.append(PropertyChange(path, value, {"unknown": f"after {name} is replaced"},
                                            why, _ignored(path, res.get("ignoreChanges", []))))
            if not extra:
                continue
            props = (*(current.properties if current else ()), *extra)
            change = ResourceChange(key, old[key], res, props,
                                    current.urn_changed if current else False)
            changes[key] = change
            if change.replaced:
                replaced.add(res.get("ref", res["name"]))
    out.changed = [changes[k] for k in sorted(changes)]


def _value(value: Any) -> str:
    return "(absent)" if value is MISSING else shown(value)


def _property_line(p: PropertyChange) -> str:
    old, new = _value(p.old), _value(p.new)
    if old == new == "[secret]":
        new = "[secret] (changed)"
    line = f"    {p.path}: {old} -> {new}"
    if p.ignored:
        line += "   ignored (ignoreChanges): not applied to the existing resource"
    elif p.replaces:
        line += f"   FORCES REPLACEMENT: {p.replaces}"
    return line


def text(diff: StackDiff, stack: str, base_label: str, head_label: str) -> str:
    replaced = [c for c in diff.changed if c.replaced]
    lines = [f"# stack {stack}: {base_label} -> {head_label}: {len(diff.added)} to add, "
             f"{len(diff.removed)} to remove, {len(diff.changed)} to change "
             f"({len(replaced)} replaced)"]
    if diff.empty:
        lines.append("no changes")
    for res in diff.added:
        lines += ["", *resource_lines(res, "+")]
    for res in diff.removed:
        lines += ["", f"- {res['type']} {res['name']}"]
        if res.get("protect"):
            lines.append("    ! protected: `pulumi up` fails until multizone:protect is false")
    for change in diff.changed:
        head = change.head
        verb = "REPLACE" if change.replaced else "update"
        lines += ["", f"~ {head['type']} {head['name']}  ({verb})"]
        if change.urn_changed:
            lines.append(f"    (urn) {change.base['urn']} -> {head['urn']}   new URN: Pulumi "
                         "deletes and creates it unless the program gives an alias")
        lines += [_property_line(p) for p in change.properties]
        if change.replaced and head.get("protect"):
            lines.append("    ! protected: `pulumi up` fails rather than replace it; lift "
                         "multizone:protect first if the replacement is meant")
        elif change.replaced and head.get("deleteBeforeReplace"):
            lines.append("    ! deleteBeforeReplace: the old one goes before the new one exists")
    for typ in sorted(diff.unknown_types):
        lines.append(f"\n? replacement rules unknown for {typ}: read its provider docs")
    if diff.outputs:
        lines += ["", "# outputs"]
        lines += [_property_line(p) for p in diff.outputs]
    return "\n".join(lines) + "\n"
