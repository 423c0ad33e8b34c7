"""The prod stack rendered once per session (mocks, no credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.review.render import document, evaluate_stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prod_doc() -> dict[str, Any]:
    return document(evaluate_stack(ROOT, "prod"))
