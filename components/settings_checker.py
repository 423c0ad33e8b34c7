"""The collector of stack-setting mistakes (one line each, naming the `multizone:` key and
the fix) with its typed accessors, and the patterns of values only the stack has.

Its own module because every part of the settings reads through it: the top-level reader
(components.settings) and each section's reader (components.settings_sections).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from bootstrap import rules

NS = "multizone"

# Settings of the stack alone; the rules for values the inventory shares (names, versions,
# ranges, keys, PKI) are bootstrap/rules.py. Whole-value, ASCII-only patterns (`\Z`).
_AMI = re.compile(r"ami-[0-9a-f]{8}(?:[0-9a-f]{9})?\Z", re.ASCII)
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+\Z", re.ASCII)
T = TypeVar("T")


class _Checker:
    """Collects one line per mistake; each accessor returns None when its value is bad."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, message: str) -> None:
        self.problems.append(rules.one_line(f"{NS}:{key}: {message}"))

    def ok(self, rule: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Apply one of `bootstrap.rules` (shared with the inventory); a `Problem` becomes
        one line naming the stack key, and the value None."""
        try:
            return rule(*args, **kwargs)
        except rules.Problem as problem:
            self.bad(problem.field, problem.message)
            return None

    def string(self, raw: Mapping[str, Any], key: str, where: str, default: Any = None,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str | None:
        value = raw.get(key, default)
        if pattern is None:
            return self.ok(rules.text, value, where, hint or "set it")
        return self.ok(rules.matching, value, where, pattern, hint)

    def integer(self, raw: Mapping[str, Any], key: str, where: str, default: Any,
                low: int, high: int, hint: str = "") -> int | None:
        return self.ok(rules.integer, raw.get(key, default), where, low, high, hint)

    def boolean(self, raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = self.ok(rules.boolean, raw.get(key, default), where)
        return default if value is None else value

    def choice(self, raw: Mapping[str, Any], key: str, where: str, default: str,
               choices: tuple[str, ...]) -> str | None:
        value = raw.get(key, default)
        if value not in choices:
            self.bad(where, f"{value!r} is not allowed; use one of: {', '.join(choices)}")
            return None
        return str(value)

    def cidr(self, value: Any, where: str) -> ipaddress.IPv4Network | None:
        net = self.ok(rules.cidr, value, where, ipv4_only=True, example="10.0.16.0/20")
        return net if isinstance(net, ipaddress.IPv4Network) else None

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            self.bad(where, f"expected a mapping, got {rules.describe(value)}; see "
                            "stacks/Pulumi.dev.yaml")
            return {}
        for key in value:
            if not isinstance(key, str):
                self.bad(where, f"key {key!r} is not text; quote it")
            elif key not in allowed:
                self.bad(f"{where}.{key}", f"unknown key; use one of: {', '.join(allowed)}")
        return {k: v for k, v in value.items() if isinstance(k, str)}

    def cidr_list(self, value: Any, where: str) -> list[ipaddress.IPv4Network] | None:
        if not isinstance(value, list) or not value:
            self.bad(where, f"expected a non-empty list of CIDRs, got {rules.describe(value)}; "
                            "write e.g. [203.0.113.0/24]")
            return None
        nets = [self.cidr(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return None if None in nets else nets  # type: ignore[return-value]
