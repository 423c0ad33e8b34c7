"""Which test stacks exist and which a sweep destroys, and why: plain code, tested without Pulumi.

Test environments are pull requests' stacks, `pr-<number>`, and nothing else: `stack_of`
turns what a person or a workflow typed (`42` or `pr-42`) into that name or refuses it, so
no `envs` action can reach `prod`, `dev` or any stack that is not a pull request's, however
it is spelled. A sweep destroys a stack only when everything says it may be: it is a
`pr-<number>` stack, nothing in it is protected (neither the setting, read strictly, nor any
resource in its state), and it carries an expiry date (config `multizone:expiresAt`, or the
`expires-at` tag on the stack or its resources) that has passed. Anything else is kept, with
the reason, so a sweep's report explains itself.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.review.errors import ReviewError

EXPIRY_TAG = "expires-at"
EXPIRY_KEY = "multizone:expiresAt"
PROTECT_KEY = "multizone:protect"
# pr-1 .. pr-999999999: no leading zero, so one pull request has exactly one stack name.
_PR_NAME = re.compile(r"pr-([1-9][0-9]{0,8})\Z")
_PR_NUMBER = re.compile(r"[1-9][0-9]{0,8}\Z")


def stack_of(given: str | int | None) -> str:
    """`42` or `pr-42` -> `pr-42`; anything else is refused in one line."""
    text = str(given if given is not None else "").strip()
    if _PR_NUMBER.match(text):
        return f"pr-{text}"
    if _PR_NAME.match(text):
        return text
    shown = repr(given) if given not in (None, "") else "nothing"
    raise ReviewError(f"{shown} is not a pull request's test stack; give its number (42) or "
                      "its name (pr-42): envs only ever touches pr-<number> stacks")


def pr_stack(name: str) -> str | None:
    """The `pr-<n>` name of a backend's stack (`pr-7`, or `org/project/pr-7` on Pulumi
    Cloud and project-scoped backends), or None for every other stack."""
    parts = name.split("/")
    if len(parts) not in (1, 3) or not all(parts):
        return None
    return parts[-1] if _PR_NAME.match(parts[-1]) else None


@dataclass(frozen=True)
class StackInfo:
    """What a sweep knows of one stack (from the backend, or from a test)."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)  # stack and resource tags
    protected_resources: int = 0


@dataclass(frozen=True)
class Verdict:
    stack: str
    destroy: bool
    reason: str


def protection(value: Any) -> tuple[bool, str | None]:
    """(protected, why) of a `multizone:protect` value, read strictly: only a real boolean or
    exactly "true"/"false" is understood; anything else ("yes", "1", "on") counts as
    protected, so a typo can keep a stack but never lose one."""
    if value is None or value is False or value == "false":
        return False, None
    if value is True or value == "true":
        return True, f"{PROTECT_KEY} is true"
    return True, (f"{PROTECT_KEY} {value!r} is not understood (use true or false); "
                  "treated as protected")


def expiry(info: StackInfo) -> str | None:
    value = info.config.get(EXPIRY_KEY) or info.tags.get(EXPIRY_TAG)
    return None if value is None else str(value)


def expires_at(value: str) -> dt.datetime:
    """A stack dated D may be destroyed from 00:00 UTC on D (settings: YYYY-MM-DD)."""
    day = dt.date.fromisoformat(value)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def decide(info: StackInfo, now: dt.datetime) -> Verdict:
    if pr_stack(info.name) is None:
        return Verdict(info.name, False, "not a pull request's stack (pr-<number>); "
                                         "sweeps never touch it")
    protected, why = protection(info.config.get(PROTECT_KEY))
    if protected:
        return Verdict(info.name, False, str(why))
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


RULE_TYPES = ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",)


def address_rules(deployment: Mapping[str, Any], cidr: str) -> list[str]:
    """The URNs of the ingress rules in a stack's state that admit exactly `cidr`: what
    `envs revoke` removes when a CI run ends (no other rule, whatever its peer)."""
    return sorted(str(res["urn"]) for res in deployment.get("resources", [])
                  if res.get("type") in RULE_TYPES
                  and (res.get("inputs") or {}).get("cidrIpv4") == cidr)
