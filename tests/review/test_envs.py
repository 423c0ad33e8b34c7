"""What a sweep destroys: only expired, unprotected, non-prod stacks; the reason always."""

from __future__ import annotations

import datetime as dt

from components.review.envs import StackInfo, decide, sweep

NOW = dt.datetime(2026, 6, 10, 12, 0, tzinfo=dt.UTC)
EXPIRED = {"multizone:expiresAt": "2026-06-09"}


def test_an_expired_unprotected_stack_is_destroyed() -> None:
    verdict = decide(StackInfo("pr-7", EXPIRED), NOW)
    assert verdict.destroy and verdict.reason == "expired 2026-06-09 (1d 12h ago)"


def test_the_expiry_tag_counts_when_the_config_is_gone() -> None:
    assert decide(StackInfo("pr-7", tags={"expires-at": "2026-06-01"}), NOW).destroy


def test_a_stack_expiring_later_is_kept() -> None:
    verdict = decide(StackInfo("pr-7", {"multizone:expiresAt": "2026-06-11"}), NOW)
    assert not verdict.destroy and verdict.reason == "expires 2026-06-11 (in 12h)"


def test_expiry_starts_at_midnight_utc_of_the_date() -> None:
    midnight = dt.datetime(2026, 6, 11, tzinfo=dt.UTC)
    info = StackInfo("pr-7", {"multizone:expiresAt": "2026-06-11"})
    assert not decide(info, midnight - dt.timedelta(seconds=1)).destroy
    assert decide(info, midnight).destroy


def test_prod_is_never_destroyed_even_expired_and_unprotected() -> None:
    for name in ("prod", "acme/multizone-k8s/prod"):
        verdict = decide(StackInfo(name, {**EXPIRED, "multizone:protect": "false"}), NOW)
        assert not verdict.destroy and "prod" in verdict.reason


def test_a_protected_stack_is_never_destroyed() -> None:
    by_setting = decide(StackInfo("pr-7", {**EXPIRED, "multizone:protect": "true"}), NOW)
    by_state = decide(StackInfo("pr-7", EXPIRED, protected_resources=3), NOW)
    assert not by_setting.destroy and not by_state.destroy
    assert by_state.reason == "3 resource(s) protected in its state"


def test_a_stack_without_expiry_or_with_a_bad_one_is_kept() -> None:
    assert not decide(StackInfo("dev"), NOW).destroy
    bad = decide(StackInfo("pr-7", {"multizone:expiresAt": "next week"}), NOW)
    assert not bad.destroy and "not a date" in bad.reason


def test_sweep_reports_every_stack_in_name_order() -> None:
    verdicts = sweep([StackInfo("pr-9", EXPIRED), StackInfo("dev"), StackInfo("prod")], NOW)
    assert [(v.stack, v.destroy) for v in verdicts] == [
        ("dev", False), ("pr-9", True), ("prod", False)]
