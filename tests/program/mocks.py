"""The AWS mocks and the evaluation harness live in `components/review/mocks.py` (one copy,
shared with `bin/mzk render` and `diff`); the program tests import them from here too."""

from components.review.mocks import (
    ACCOUNT,
    AWSError,
    AwsMocks,
    Evaluation,
    RecordingMonitor,
    Registered,
    evaluate,
    program,
)

__all__ = ["ACCOUNT", "AWSError", "AwsMocks", "Evaluation", "RecordingMonitor", "Registered",
           "evaluate", "program"]
