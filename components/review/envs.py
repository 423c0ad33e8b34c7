"""Which test stacks a sweep destroys, and why: plain code, tested without Pulumi.

A stack is destroyed only when everything says it may be: it is not `prod`, nothing in it
is protected (neither the setting nor any resource), and it carries an expiry date (config
`multizone:expiresAt`, or the `expires-at` tag on the stack or its resources) that has
passed. Anything else is kept, with the reason, so a sweep's report explains itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PROD = "prod"
EXPIRY_TAG = "expires-at"
EXPIRY_KEY = "multizone:expiresAt"


@dataclass(frozen=True)
class StackInfo:
    """What a sweep knows of one stack (from the backend, or from a test)."""

    name: str
    config: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)  # stack and resource tags
    protected_resources: int = 0


@dataclass(frozen=True)
class Verdict:
    stack: str
    destroy: bool
    reason: str


def expiry(info: StackInfo) -> str | None:
    return info.config.get(EXPIRY_KEY) or info.tags.get(EXPIRY_TAG)


def expires_at(value: str) -> dt.datetime:
    """A stack dated D may be destroyed from 00:00 UTC on D (settings: YYYY-MM-DD)."""
    day = dt.date.fromisoformat(value)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def decide(info: StackInfo, now: dt.datetime) -> Verdict:
    short = info.name.rsplit("/", 1)[-1]  # org/project/stack on Pulumi Cloud
    if short == PROD:
        return Verdict(info.name, False, "prod is never swept")
    if str(info.config.get("multizone:protect", "false")).lower() == "true":
        return Verdict(info.name, False, "multizone:protect is true")
    if info.protected_resources:
        return Verdict(info.name, False,
                       f"{info.protected_resources} resource(s) protected in its state")
    value = expiry(info)
    if not value:
        return Verdict(info.name, False, "no expiry (multizone:expiresAt or expires-at tag)")
    try:
        when = expires_at(value)
    except ValueError:
        return Verdict(info.name, False, f"expiry {value!r} is not a date (YYYY-MM-DD)")
    if now < when:
        return Verdict(info.name, False, f"expires {value} (in {_span(when - now)})")
    return Verdict(info.name, True, f"expired {value} ({_span(now - when)} ago)")


def sweep(stacks: Iterable[StackInfo], now: dt.datetime) -> list[Verdict]:
    return [decide(info, now) for info in sorted(stacks, key=lambda s: s.name)]


def _span(delta: dt.timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24}d {hours % 24}h" if hours >= 24 else f"{hours}h"
