"""The value rules, one set for both halves of the project.

The stack settings (components/settings.py, `multizone:*` keys in camelCase) and the
inventory (bootstrap/inventory.py, snake_case fields) describe many of the same values: the
cluster's name, its Kubernetes version, its service and pod ranges, the PKI settings, SSH
keys. The Pulumi program turns the first into the second, so a value the stack accepts must
be a value the inventory accepts. Every such rule lives here, once; each caller passes the
field's name as its user writes it (`pki.rsa_bits` in an inventory, `pki.rsaBits` in a stack
file) and turns a `Problem` into its own one-line error.

Patterns are ASCII only and match the whole value (`fullmatch`, `\\Z`): `$` would accept a
trailing newline and `\\d` fullwidth digits. No Pulumi import: the bootstrap uses this too.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from bootstrap.k8s_releases import release_for, supported_versions


class Problem(ValueError):
    """One broken rule: the field as its user wrote it, and `<what is wrong>; <fix>`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --------------------------------------------------------------------------- describing

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """The text with line breaks and other control characters escaped: a message is one line
    whatever the user wrote."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def describe(value: Any) -> str:
    """A value as a message shows what the user wrote: `the string '2048'`, `a list`."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int) and abs(value) >= 10**30:
        return "a number of more than 30 digits"
    return repr(value)


# --------------------------------------------------------------------------- scalars


def text(value: Any, field: str, hint: str = "set it") -> str:
    """A non-empty string on one line, without control characters."""
    if not isinstance(value, str) or not value:
        raise Problem(field, f"expected a non-empty string, got {describe(value)}; {hint}")
    if _CONTROL.search(value):
        raise Problem(field, f"{value!r} holds a line break or another control character; "
                             "remove it (in YAML, a '|' block keeps its final line break, "
                             "'|-' drops it)")
    return value


def matching(value: Any, field: str, pattern: re.Pattern[str], hint: str) -> str:
    """A string the whole of which matches `pattern`."""
    value = text(value, field, hint)
    if not pattern.fullmatch(value):
        raise Problem(field, f"{value!r} is not valid; {hint}")
    return value


def integer(value: Any, field: str, low: int, high: int, hint: str = "") -> int:
    """A whole number (not a boolean, not text) in low..high."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(field, f"expected a whole number, got {describe(value)}; "
                             f"use {low}..{high}")
    if not low <= value <= high:
        raise Problem(field, f"{describe(value)} is out of range; {hint or f'use {low}..{high}'}")
    return value


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise Problem(field, f"expected true or false, got {describe(value)}; "
                             "write true or false")
    return value


def choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    """One of the given strings."""
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else describe(value)
        raise Problem(field, f"{shown} is not one of: {', '.join(choices)}; use one of them")
    return value


def int_choice(value: Any, field: str, choices: tuple[int, ...]) -> int:
    """One of the given whole numbers (`"2048"`, quoted, is text and refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(field, f"expected a whole number, got {describe(value)}; use one of: "
                             f"{', '.join(map(str, choices))}")
    if value not in choices:
        raise Problem(field, f"{describe(value)} is not one of: "
                             f"{', '.join(map(str, choices))}; use one of them")
    return value


# --------------------------------------------------------------------------- names

# RFC 1123 label: the rule Kubernetes applies to node names; DNS names are built from them.
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\Z", re.ASCII)
# A login name as useradd accepts it by default (and cloud-init passes it on).
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z", re.ASCII)
LABEL_HINT = "use lower-case letters, digits and '-', at most 63 characters"


def dns_label(value: Any, field: str, hint: str = LABEL_HINT) -> str:
    return matching(value, field, _LABEL, hint)


def dns_name(value: Any, field: str, example: str, what: str = "DNS name") -> str:
    """Dot-separated DNS labels, at most 253 characters."""
    value = text(value, field, f"write e.g. {example}")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise Problem(field, f"{value!r} is not a {what}; write e.g. {example} (lower-case "
                             "letters, digits and '-' between dots)")
    return value


def user_name(value: Any, field: str) -> str:
    return matching(value, field, _USER, "use a login name such as admin (lower-case "
                                         "letters, digits, '_' and '-')")


def file_path(value: Any, field: str, hint: str) -> str:
    """A local path as text on one line (`~` is expanded where it is opened)."""
    return text(value, field, hint)


# --------------------------------------------------------------------------- Kubernetes

_VERSION = re.compile(r"1\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\Z", re.ASCII)
MIN_MINOR = 28  # the oldest Kubernetes minor release whose flags the bootstrap renders
EGRESS_MODES = ("ssh-tunnel", "konnectivity")
CNI_CHOICES = ("bridge", "external")


def kubernetes_version(value: Any, field: str, *, pinned: bool) -> str:
    """A release `1.<minor>.<patch>`; with `pinned`, one whose checksums the project pins
    (real hosts install only those; the lab may bring its own binaries)."""
    hint = f"write a release such as \"{supported_versions()[0]}\" (quoted)"
    version = matching(value, field, _VERSION, hint)
    minor = int(version.split(".")[1])
    if minor < MIN_MINOR:
        raise Problem(field, f"{version} is too old; use 1.{MIN_MINOR}.0 or newer")
    if pinned and release_for(version) is None:
        raise Problem(field, f"{version} has no pinned release checksums; use one of "
                             f"{', '.join(supported_versions())}")
    return version


# --------------------------------------------------------------------------- networks

_CIDR_SHAPE = re.compile(r"[0-9A-Fa-f:.]+/[0-9]{1,3}\Z", re.ASCII)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def cidr(value: Any, field: str, *, ipv4_only: bool = False,
         example: str = "10.0.1.0/24") -> Network:
    """A network in CIDR form (`address/prefix`, as text), its host bits zero."""
    if not isinstance(value, str):
        raise Problem(field, f"expected a network in CIDR form, got {describe(value)}; "
                             f"write it as text, e.g. {example}")
    value = text(value, field, f"write e.g. {example}")
    kind = "an IPv4 network" if ipv4_only else "a network in CIDR form"
    problem = f"{value!r} is not {kind} with its host bits zero; write e.g. {example}"
    if not _CIDR_SHAPE.fullmatch(value):
        raise Problem(field, problem)
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise Problem(field, problem) from err
    if ipv4_only and not isinstance(net, ipaddress.IPv4Network):
        raise Problem(field, f"{net} is IPv6; this program builds IPv4 networks, use IPv4")
    return net


def service_and_pod(service: Network, pod: Network, service_field: str, pod_ref: str) -> None:
    """The service range beside the pod range: one IP version, apart, room for services."""
    if service.version != pod.version:
        raise Problem(service_field, f"{service} and {pod_ref} {pod} are of different IP "
                                     "versions; use one version for both")
    if service.overlaps(pod):  # type: ignore[arg-type]
        raise Problem(service_field, f"{service} overlaps {pod_ref} {pod}; choose ranges "
                                     "that do not overlap")
    if service.num_addresses < 16:
        raise Problem(service_field, f"{service} is too small; use /28 or larger")


# --------------------------------------------------------------------------- SSH keys

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048
_KEY_LINE = re.compile(r"([A-Za-z0-9@.-]+)[ \t]+([^ \t]+)(?:[ \t]+(.*))?\Z", re.ASCII)


def public_key(value: Any, field: str, *, what: str, hint: str,
               keep_comment: bool = False) -> str:
    """An OpenSSH public key line `<type> <base64> [comment]`, parsed in full: a truncated
    or corrupt key is refused here, not when a connection is made. Returns `<type> <base64>`
    (with the comment if `keep_comment`)."""
    line = text(value, field, hint).strip(" \t")
    match = _KEY_LINE.fullmatch(line)
    if not match or match.group(1) not in SSH_KEY_TYPES:
        raise Problem(field, f"malformed {what}; {hint}")
    kind, body = match.group(1), match.group(2)
    try:
        blob = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as err:
        raise Problem(field, f"{what} is not valid base64; {hint}") from err
    # The blob starts with its own type name, length-prefixed.
    if len(blob) < 4:
        raise Problem(field, f"{what} is truncated; {hint}")
    length = int.from_bytes(blob[:4], "big")
    if blob[4:4 + length] != kind.encode("ascii"):
        raise Problem(field, f"{what} data does not match its type {kind}; {hint}")
    try:
        key = load_ssh_public_key(f"{kind} {body}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm) as err:
        raise Problem(field, f"{what} is truncated or corrupt (its data is not a valid "
                             f"{kind} key); {hint}") from err
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise Problem(field, f"{what} is a {key.key_size}-bit RSA key, too weak; use an "
                             f"ed25519 key or RSA of {MIN_RSA_BITS} bits or more")
    return line if keep_comment else f"{kind} {body}"


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class PKISettings:
    key_type: str
    rsa_bits: int
    ca_validity_days: int
    validity_days: int
    renew_before_days: int
    ca_keys_on_hosts: bool


PKI_DEFAULTS = PKISettings(key_type="rsa", rsa_bits=2048, ca_validity_days=3650,
                           validity_days=365, renew_before_days=30, ca_keys_on_hosts=True)
PKI_FIELDS = ("key_type", "rsa_bits", "ca_validity_days", "validity_days",
              "renew_before_days", "ca_keys_on_hosts")
KEY_TYPES = ("rsa", "ecdsa")
RSA_BITS = (2048, 3072, 4096)


def pki_settings(values: Mapping[str, Any], names: Mapping[str, str],
                 ref: str = "") -> tuple[PKISettings | None, list[Problem]]:
    """The PKI settings from `values` (PKISettings field -> value, only those given), or
    None and every problem. `names`: PKISettings field -> the field as its user writes it;
    `ref`: put before a name when a message refers to another field (`multizone:`)."""
    problems: list[Problem] = []
    checks: dict[str, Any] = {
        "key_type": lambda v, f: choice(v, f, KEY_TYPES),
        "rsa_bits": lambda v, f: int_choice(v, f, RSA_BITS),
        "ca_validity_days": lambda v, f: integer(v, f, 1, 36500),
        "validity_days": lambda v, f: integer(v, f, 1, 3650),
        "renew_before_days": lambda v, f: integer(v, f, 0, 3650),
        "ca_keys_on_hosts": boolean,
    }
    good: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            good[name] = check(values.get(name, getattr(PKI_DEFAULTS, name)), names[name])
        except Problem as problem:
            problems.append(problem)
    renew, days, ca_days = (good.get(k) for k in ("renew_before_days", "validity_days",
                                                  "ca_validity_days"))
    if renew is not None and days is not None and renew >= days:
        problems.append(Problem(names["renew_before_days"],
                                f"{renew} days is not less than {ref}{names['validity_days']} "
                                f"({days}); make it smaller"))
    if days is not None and ca_days is not None and days > ca_days:
        problems.append(Problem(names["validity_days"],
                                f"{days} days: certificates would outlive their CA "
                                f"({ref}{names['ca_validity_days']} is {ca_days}); make it at "
                                "most that"))
    if problems:
        return None, problems
    return PKISettings(**good), []
