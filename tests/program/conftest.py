"""Each stack is evaluated once under the AWS mocks; tests read the recorded resources.

`evaluate` runs the program inside a `@pulumi.runtime.test` function and waits for every
resource and output, so the tests below assert on resolved, plain data. The bootstrap
resource answers as its provider's create does (`BootstrapMocks`: a CA and every node pool's
join token), so the node pools' user data is the join script.
"""

from __future__ import annotations

import pytest

from tests.program.mocks import Evaluation
from tests.program.mocks import evaluate_bootstrapped as evaluate
from tests.program.stackconfig import stack_config


@pytest.fixture(scope="session")
def prod() -> Evaluation:
    return evaluate("prod", stack_config("prod"))


@pytest.fixture(scope="session")
def test_stack() -> Evaluation:
    return evaluate("test", stack_config("test"))


@pytest.fixture(scope="session")
def dev() -> Evaluation:
    return evaluate("dev", stack_config("dev"))


@pytest.fixture(scope="session")
def two_per_zone() -> Evaluation:
    """prod with two control-plane hosts a zone and SSH-tunnel egress."""
    return evaluate("prod", stack_config("prod", controlPlanePerZone=2, egress="ssh-tunnel"))


@pytest.fixture(scope="session")
def stacks(prod: Evaluation, test_stack: Evaluation, dev: Evaluation) -> list[Evaluation]:
    return [prod, test_stack, dev]
