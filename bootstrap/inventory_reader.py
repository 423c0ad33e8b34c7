"""Typed accessors for reading an inventory: each raises a `ConfigError` that names the field
and the fix in one line. The value rules themselves are `bootstrap.rules`, shared with the
stack settings; the inventory's structure is `bootstrap.inventory`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from bootstrap import rules
from bootstrap.errors import ConfigError

T = TypeVar("T")


class Reader:
    """Small typed accessors that raise a `ConfigError` naming the field; the value rules
    themselves are `bootstrap.rules`, shared with the stack settings."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(rules.one_line(f"{self.source}: {where or 'top level'}: {message}"))

    def check(self, rule: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Apply one of `bootstrap.rules`; its `Problem` becomes this file's one line."""
        try:
            return rule(*args, **kwargs)
        except rules.Problem as problem:
            raise self.fail(problem.field, problem.message) from problem

    def mapping(self, value: Any, where: str, required: tuple[str, ...] = (),
                optional: tuple[str, ...] | None = ()) -> dict[str, Any]:
        """A mapping with string keys; with `optional=None` any key is allowed."""
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {kind(value)}; write its fields "
                                   "as `key: value` lines (see examples/inventory.yaml)")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(where, f"key {key!r} is not a string; quote it")
        if optional is not None:
            allowed = (*required, *optional)
            for key in value:
                if key not in allowed:
                    raise self.fail(join(where, key),
                                    f"unknown key; allowed here: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(join(where, key), "missing; add it")
        return dict(value)

    def string(self, value: Any, where: str, pattern: re.Pattern[str] | None = None,
               hint: str = "set it") -> str:
        if pattern is not None:
            return self.check(rules.matching, value, where, pattern, hint)
        return self.check(rules.text, value, where, hint)

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        return self.check(rules.integer, value, where, low, high)

    def number(self, value: Any, where: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"expected a number, got {kind(value)}; use {low}..{high}")
        if not low <= value <= high:
            raise self.fail(where, f"{kind(value)} is out of range; use {low}..{high}")
        return float(value)

    def boolean(self, value: Any, where: str) -> bool:
        return self.check(rules.boolean, value, where)

    def choice(self, value: Any, where: str, choices: tuple[str, ...]) -> str:
        return self.check(rules.choice, value, where, choices)

    def address(self, value: Any, where: str) -> str:
        text = self.string(value, where, hint="write e.g. 10.0.1.10")
        try:
            return str(ipaddress.ip_address(text))
        except ValueError as err:
            raise self.fail(where, f"{text!r} is not an IP address; write e.g. 10.0.1.10") \
                from err

    def cidr(self, value: Any, where: str) -> rules.Network:
        return self.check(rules.cidr, value, where)

    def items(self, value: Any, where: str, parse_one: Callable[[Any, str], T]) -> list[T]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"expected a non-empty list, got {kind(value)}; list "
                                   "one or more items (see examples/inventory.yaml)")
        return [parse_one(item, f"{where}[{i}]") for i, item in enumerate(value)]


kind = rules.describe


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
