"""What a sweep destroys: only expired, unprotected pr-<n> stacks; the reason always."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from components.review.envs import (
    StackInfo,
    address_rules,
    decide,
    pr_stack,
    protection,
    stack_of,
    sweep,
)
from components.review.errors import ReviewError

NOW = dt.datetime(2026, 6, 10, 12, 0, tzinfo=dt.UTC)
EXPIRED = {"multizone:expiresAt": "2026-06-09"}
NOT_PR = ("prod", "production", "org/proj/prod", "Prod", "dev", "test", "pr-042", "pr-",
          "pr-7-old", "PR-7", "a/pr-7", "org/proj/pr-7/x", "pr-1234567890")


def test_an_expired_unprotected_stack_is_destroyed() -> None:
    verdict = decide(StackInfo("pr-7", EXPIRED), NOW)
    assert verdict.destroy and verdict.reason == "expired 2026-06-09 (1d 12h ago)"


def test_a_qualified_pr_stack_is_one_too() -> None:
    assert pr_stack("acme/multizone-k8s/pr-7") == "pr-7"
    assert decide(StackInfo("acme/multizone-k8s/pr-7", EXPIRED), NOW).destroy


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


@pytest.mark.parametrize("name", NOT_PR)
def test_no_stack_but_pr_n_is_ever_swept_even_expired_and_unprotected(name: str) -> None:
    info = StackInfo(name, {**EXPIRED, "multizone:protect": "false"},
                     {"expires-at": "2026-01-01"})
    verdict = decide(info, NOW)
    assert not verdict.destroy
    assert verdict.reason.startswith("not a pull request's stack")
    assert pr_stack(name) is None


@pytest.mark.parametrize("given", [*NOT_PR, "", None, "0", "-1", "42abc", "42 ", "4.2"])
def test_only_a_number_or_pr_n_names_a_test_stack(given: str | None) -> None:
    if given == "42 ":  # surrounding blanks are forgiven: it is still 42
        assert stack_of(given) == "pr-42"
        return
    with pytest.raises(ReviewError) as caught:
        stack_of(given)
    assert "not a pull request's test stack" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_number_or_a_pr_name_is_accepted() -> None:
    assert stack_of("42") == stack_of(42) == stack_of("pr-42") == "pr-42"


@pytest.mark.parametrize(("value", "protected", "understood"), [
    (True, True, True), ("true", True, True), (False, False, True), ("false", False, True),
    (None, False, True), ("yes", True, False), ("1", True, False), ("on", True, False),
    ("True", True, False), (1, True, False), (0, True, False), ("garbage", True, False),
    ("", True, False),
])
def test_protection_is_read_strictly(value: Any, protected: bool, understood: bool) -> None:
    got, why = protection(value)
    assert got is protected
    assert (why is not None and "not understood" in why) is (not understood)


def test_a_protect_flag_that_is_not_understood_keeps_the_stack_and_says_so() -> None:
    verdict = decide(StackInfo("pr-7", {**EXPIRED, "multizone:protect": "yes"}), NOW)
    assert not verdict.destroy
    assert verdict.reason == ("multizone:protect 'yes' is not understood (use true or false); "
                              "treated as protected")
    assert decide(StackInfo("pr-7", {**EXPIRED, "multizone:protect": "false"}), NOW).destroy


def test_a_protected_stack_is_never_destroyed() -> None:
    by_setting = decide(StackInfo("pr-7", {**EXPIRED, "multizone:protect": "true"}), NOW)
    by_state = decide(StackInfo("pr-7", EXPIRED, protected_resources=3), NOW)
    assert not by_setting.destroy and not by_state.destroy
    assert by_state.reason == "3 resource(s) protected in its state"


def test_a_stack_without_expiry_or_with_a_bad_one_is_kept() -> None:
    assert not decide(StackInfo("pr-7"), NOW).destroy
    bad = decide(StackInfo("pr-7", {"multizone:expiresAt": "next week"}), NOW)
    assert not bad.destroy and "not a date" in bad.reason


def test_sweep_reports_every_stack_in_name_order() -> None:
    verdicts = sweep([StackInfo("pr-9", EXPIRED), StackInfo("dev", EXPIRED),
                      StackInfo("prod", EXPIRED)], NOW)
    assert [(v.stack, v.destroy) for v in verdicts] == [
        ("dev", False), ("pr-9", True), ("prod", False)]


def test_revoke_picks_the_rules_of_that_address_only() -> None:
    rule = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    state = {"resources": [
        {"urn": "u:bastion-22-runner", "type": rule, "inputs": {"cidrIpv4": "198.51.100.7/32"}},
        {"urn": "u:api-runner", "type": rule, "inputs": {"cidrIpv4": "198.51.100.7/32"}},
        {"urn": "u:vpn", "type": rule, "inputs": {"cidrIpv4": "203.0.113.0/24"}},
        {"urn": "u:other-runner", "type": rule, "inputs": {"cidrIpv4": "198.51.100.70/32"}},
        {"urn": "u:group", "type": rule, "inputs": {"referencedSecurityGroupId": "sg-1"}},
        {"urn": "u:egress", "type": "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
         "inputs": {"cidrIpv4": "198.51.100.7/32"}},
    ]}
    assert address_rules(state, "198.51.100.7/32") == ["u:api-runner", "u:bastion-22-runner"]
    assert address_rules(state, "192.0.2.1/32") == []
