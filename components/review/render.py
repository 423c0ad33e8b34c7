"""A stack as reviewable text: every resource with its inputs, under the AWS mocks.

`pulumi preview` needs the CLI, a backend and credentials; this needs none, so a fork's pull
request or a laptop can see what a change declares. The output is stable: resources sorted
by name, properties flattened to paths (`tags.Name`, `ingress[0].fromPort`) and sorted,
values AWS would assign (IDs, ARNs, addresses, DNS names, host keys) shown as
`${<resource>.<attribute>}` as a preview shows them unknown, base64 user data decoded, and
secrets shown as `[secret]` (the document keeps a keyed digest, so a diff can tell that a
secret changed without showing it).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from components.review.evaluation import Evaluation, evaluate
from components.review.mocks import AwsMocks
from components.review.secret_inputs import Secret

SCHEMA = 1
# Outputs AWS assigns, which a preview shows as unknown: rendered as references.
_ASSIGNED = re.compile(r"(^id$|Id$|^arn$|Arn$|arnSuffix|dnsName|privateDns|privateIp|publicIp"
                       r"|^name$|uniqueId|public_key)")
_SKIP_INPUTS = ("__provider",)  # a dynamic resource's pickled provider: code, not settings


def stack_file(root: Path, stack: str) -> Path:
    return root / "stacks" / f"Pulumi.{stack}.yaml"


def known_stacks(root: Path) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")]
                  for p in (root / "stacks").glob("Pulumi.*.yaml"))


def engine_config(root: Path, stack: str) -> dict[str, str]:
    """The stack file's values as the engine hands them to the program."""
    from components.stackfile import as_engine_config, config_values

    return as_engine_config(config_values(stack_file(root, stack)))


def evaluate_stack(root: Path, stack: str) -> Evaluation:
    config = engine_config(root, stack)
    return evaluate(stack, config, AwsMocks(region=config.get("aws:region", "eu-west-1")))


def references(ev: Evaluation) -> dict[tuple[str, str], str]:
    """How a resource is named in `${...}`: its name, with its type where names collide
    (a subnet and a route table may share one)."""
    count: dict[str, int] = {}
    for reg in ev.resources:
        count[reg.name] = count.get(reg.name, 0) + 1
    return {(r.typ, r.name): r.name if count[r.name] == 1 else f"{r.typ.rsplit(':', 1)[-1]}:"
            f"{r.name}" for r in ev.resources}


def _assigned(ev: Evaluation) -> dict[str, str]:
    """Value -> reference, for every value AWS assigns to exactly one resource."""
    refs = references(ev)
    seen: dict[str, dict[str, list[str]]] = {}  # value -> resource -> attributes
    for reg in ev.resources:
        candidates = {"id": reg.id, **reg.outputs}
        for key, value in candidates.items():
            if not isinstance(value, str) or len(value) < 7 or not _ASSIGNED.search(key):
                continue
            if key != "id" and reg.inputs.get(key) == value:
                continue  # given by the program, not assigned
            seen.setdefault(value, {}).setdefault(refs[(reg.typ, reg.name)], []).append(key)
    out = {}
    for value, owners in seen.items():
        own = [n for n, keys in owners.items() if "id" in keys]  # the resource it names
        if len(owners) == 1 or len(own) == 1:  # one owner: a reference, not a coincidence
            name = own[0] if own else next(iter(owners))
            keys = owners[name]
            key = sorted(keys, key=lambda k: (k == "id", k))[0]  # `arn` reads better than `id`
            out[value] = f"${{{name}.{key}}}"
    return out


class _Substitute:
    """Replaces assigned values, whole or inside longer text (user data, policies)."""

    def __init__(self, assigned: Mapping[str, str]) -> None:
        self.exact = dict(assigned)
        long = sorted((v for v in assigned if len(v) >= 10), key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, long))) if long else None

    def __call__(self, text: str) -> str:
        if text in self.exact:
            return self.exact[text]
        if self.pattern is None or len(text) < 10:
            return text
        return self.pattern.sub(lambda m: self.exact[m.group(0)], text)


GZIP_MAGIC = b"\x1f\x8b"
MAX_USER_DATA_TEXT = 1 << 20  # a gzip bomb in a diff stays a base64 string


def _decoded(text: str) -> str:
    """Base64 user data as the text cloud-init reads (gzip-compressed or not); anything
    else unchanged."""
    if len(text) < 16 or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", text):
        return text
    try:
        raw = base64.b64decode(text, validate=False)
        if raw.startswith(GZIP_MAGIC):
            unpacker = zlib.decompressobj(wbits=31)
            raw = unpacker.decompress(raw, MAX_USER_DATA_TEXT)
            if unpacker.unconsumed_tail:
                return text
        plain = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, zlib.error):
        return text
    return plain if plain.startswith(("#cloud-config", "#!")) else text


def flatten(value: Any, sub: _Substitute, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) pairs; a leaf is JSON data, a `{"secret": digest}`, or an empty {}/[]."""
    if isinstance(value, Secret):
        yield prefix, {"secret": value.digest}
    elif isinstance(value, dict):
        if not value and prefix:
            yield prefix, {}
        for key in sorted(value):
            if key not in _SKIP_INPUTS:
                yield from flatten(value[key], sub, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list | tuple):
        if not value:
            yield prefix, []
        for i, item in enumerate(value):
            yield from flatten(item, sub, f"{prefix}[{i}]")
    elif isinstance(value, str):
        text = sub(value)
        yield prefix, _decoded(text) if prefix.endswith("serData") else text
    elif isinstance(value, float) and value.is_integer():
        yield prefix, int(value)  # the engine sends every number as a float
    else:
        yield prefix, value


def document(ev: Evaluation) -> dict[str, Any]:
    """The evaluation as plain data: what `text` prints and what `diff` compares."""
    sub = _Substitute(_assigned(ev))
    refs = references(ev)
    monitor = ev.monitor
    resources = {}
    for reg in ev.resources:
        key = (reg.typ, reg.name)
        resources[f"{reg.typ}::{reg.name}"] = {
            "type": reg.typ, "name": reg.name, "ref": refs[key],
            "urn": monitor.urns.get(key, ""),
            "protect": reg.protect,
            "ignoreChanges": sorted(monitor.ignore_changes.get(key, ())),
            "replaceOnChanges": sorted(monitor.replace_on_changes.get(key, ())),
            "deleteBeforeReplace": monitor.delete_before_replace.get(key, False),
            "inputs": dict(flatten(reg.shown_inputs or reg.inputs, sub)),
        }
    outputs: dict[str, Any] = {}
    for name in sorted(ev.outputs):
        if ev.secret_outputs.get(name):
            outputs[name] = {"secret": "output"}
        else:
            outputs.update(flatten(ev.outputs[name], sub, name))
    return {"schema": SCHEMA, "stack": ev.stack, "resources": resources, "outputs": outputs}


def shown(value: Any) -> str:
    """One leaf as text: secrets masked, strings quoted (multi-line ones as a block)."""
    if isinstance(value, dict) and set(value) == {"secret"}:
        return "[secret]"
    if isinstance(value, dict) and set(value) == {"unknown"}:
        return f"(known {value['unknown']})"
    if isinstance(value, str) and "\n" in value:
        return "|\n" + "\n".join(f"      {line}" for line in value.rstrip("\n").split("\n"))
    return json.dumps(value, sort_keys=True)


def resource_lines(res: Mapping[str, Any], mark: str = " ") -> list[str]:
    flags = [f for f, on in (("protect", res["protect"]),
                             ("deleteBeforeReplace", res["deleteBeforeReplace"])) if on]
    if res["ignoreChanges"]:
        flags.append("ignoreChanges: " + ", ".join(res["ignoreChanges"]))
    if res["replaceOnChanges"]:
        flags.append("replaceOnChanges: " + ", ".join(res["replaceOnChanges"]))
    head = f"{mark} {res['type']} {res['name']}" + (f"  [{'; '.join(flags)}]" if flags else "")
    parent = res["urn"].split("::")[2].rsplit("$", 1)[0] if "$" in res["urn"] else ""
    lines = [head] + ([f"    (parent) {parent}"] if parent else [])
    lines += [f"    {path} = {shown(value)}" for path, value in res["inputs"].items()]
    return lines


def text(doc: Mapping[str, Any]) -> str:
    resources = sorted(doc["resources"].values(), key=lambda r: (r["name"], r["type"]))
    lines = [f"# stack {doc['stack']}: {len(resources)} resources, rendered under mocked AWS "
             "answers (no credentials)",
             "# ${name.attr}: a value AWS assigns; [secret]: a secret input; base64 user data "
             "is shown decoded"]
    for res in resources:
        lines += ["", *resource_lines(res)]
    lines += ["", "# outputs"]
    lines += [f"  {path} = {shown(value)}" for path, value in doc["outputs"].items()]
    return "\n".join(lines) + "\n"
