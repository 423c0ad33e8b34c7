"""A stack's region must have AWS's instance identity certificate pinned: auto-scaled nodes
join by their signed identity document, so in a region without one no node could ever join.
check-stack and the program refuse such a region in one line before anything is made; a
pinned region other than the shipped stacks' own passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
import yaml

from bootstrap.errors import ConfigError
from bootstrap.node import aws_identity_certs
from components.settings import SettingsError, from_config
from components.stackfile import check
from tests.program.mocks import AwsMocks, evaluate
from tests.program.stackconfig import ROOT, stack_config, stack_values

UNPINNED = "cn-north-1"  # AWS China: another partition, deliberately not pinned
PINNED = "ap-southeast-2"  # pinned, and not the shipped stacks' eu-west-1


def values_in(region: str) -> dict:
    """The prod stack file's values, moved to `region` (its zones renamed to match)."""
    values = stack_values("prod")
    zones = [{**z, "name": region + z["name"][-1]} for z in values["multizone:zones"]]
    return {**values, "aws:region": region, "multizone:zones": zones}


def config_in(region: str) -> dict[str, str]:
    zones = values_in(region)["multizone:zones"]
    return {**stack_config("prod", zones=zones), "aws:region": region}


def expected_line(region: str) -> str:
    return (f"aws:region: no pinned AWS instance identity certificate for region {region!r} "
            f"({len(aws_identity_certs.RSA_CERTIFICATES)} commercial regions are pinned, in "
            "bootstrap/node/aws_identity_certs.pem); add that region's \"RSA\" certificate "
            f"from {aws_identity_certs.SOURCE} to that file, or use a region that is pinned "
            "there")


def test_a_region_without_a_pinned_certificate_is_one_line() -> None:
    assert aws_identity_certs.unpinned(UNPINNED) is not None
    with pytest.raises(SettingsError) as caught:
        from_config(config_in(UNPINNED), "prod", [f"{UNPINNED}{c}" for c in "abc"])
    assert caught.value.problems == (expected_line(UNPINNED),)
    assert isinstance(caught.value, ConfigError)


def test_a_pinned_region_other_than_the_shipped_one_passes() -> None:
    settings = from_config(config_in(PINNED), "prod", [f"{PINNED}{c}" for c in "abc"])
    assert settings.region == PINNED
    assert [z.name for z in settings.zones] == [f"{PINNED}{c}" for c in "abc"]


def test_a_malformed_region_is_still_its_own_single_line() -> None:
    """The certificate check runs only on a well-formed name: no second line for one mistake."""
    with pytest.raises(SettingsError) as caught:
        from_config({**stack_config("prod"), "aws:region": "Ireland"}, "prod")
    assert [p.split(":")[0] for p in caught.value.problems].count("aws") == 1
    assert caught.value.problems[0].startswith("aws:region: 'Ireland' is not an AWS region")


def write_stack(directory: Path, values: dict) -> Path:
    path = directory / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump({"config": values}))
    return path


def test_check_stack_refuses_it_in_one_line_exit_2(tmp_path: Path) -> None:
    bad = write_stack(tmp_path, values_in(UNPINNED))
    assert check(bad) == [f"{bad}: {expected_line(UNPINNED)}"]
    proc = subprocess.run([sys.executable, "-m", "components.stackfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [f"{bad}: {expected_line(UNPINNED)}"]

    (tmp_path / "ok").mkdir()
    good = write_stack(tmp_path / "ok", values_in(PINNED))
    assert check(good) == []


def test_the_program_stops_before_declaring_anything() -> None:
    mocks = AwsMocks(region=UNPINNED)
    with pytest.raises(pulumi.RunError) as caught:
        evaluate("prod", config_in(UNPINNED), mocks)
    assert str(caught.value).startswith(expected_line(UNPINNED))
    assert mocks.resources == []
