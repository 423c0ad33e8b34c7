"""The review commands' error: bad input (a stack, a ref, a missing tool), one line, exit 2."""

from bootstrap.errors import ConfigError


class ReviewError(ConfigError):
    """One line naming the thing that is wrong and what to do about it."""
