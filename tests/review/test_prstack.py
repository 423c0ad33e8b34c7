"""A pull request's stack: the test template, its own name, an expiry, never protected."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from components.review import prstack
from components.review.errors import ReviewError
from components.settings import from_config
from components.stackfile import as_engine_config, config_values

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 10, 23, 30, tzinfo=dt.UTC)


def test_values_come_from_the_template_with_name_expiry_and_no_protection() -> None:
    values = prstack.values(ROOT, 42, NOW)
    template = config_values(ROOT / "stacks" / "Pulumi.test.yaml")
    assert values["multizone:clusterName"] == "mz-pr-42"
    assert values["multizone:expiresAt"] == "2026-06-13"
    assert (values["multizone:protect"], values["multizone:ephemeral"]) == (False, True)
    assert values["multizone:zones"] == template["multizone:zones"]
    settings = from_config(as_engine_config(values), "pr-42")
    assert settings.expires_at == "2026-06-13" and not settings.protect


def test_the_written_file_is_a_valid_stack_file(tmp_path: Path) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.test.yaml").write_bytes(
        (ROOT / "stacks" / "Pulumi.test.yaml").read_bytes())
    path = prstack.write(tmp_path, 7, NOW, ttl_days=1)
    assert path.name == "Pulumi.pr-7.yaml"
    assert config_values(path)["multizone:expiresAt"] == "2026-06-11"


@pytest.mark.parametrize(("number", "ttl", "message"), [
    (0, 3, "pull request 0: not a pull request number"),
    (5, 0, "--ttl-days 0: out of range"),
    (10 ** 14, 3, "pr-100000000000000: multizone:clusterName"),
])
def test_bad_input_is_one_line(number: int, ttl: int, message: str) -> None:
    with pytest.raises(ReviewError) as caught:
        prstack.values(ROOT, number, NOW, ttl)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
