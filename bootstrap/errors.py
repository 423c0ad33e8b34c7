"""The project's error types.

Every error a user can cause or meet carries one line that names the thing (a file, a
field, a host, a certificate), what is wrong with it and what to do. The command line turns
`ConfigError` into exit code 2 and every other `MultizoneError` into exit code 1, never a
traceback.
"""


class MultizoneError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(MultizoneError):
    """Bad input: an inventory, a stack setting or a flag. Exit code 2, nothing touched."""


class PKIError(MultizoneError):
    """A certificate or key that cannot be kept or re-issued safely (a CA mismatch, say)."""


class HostConnectionError(MultizoneError):
    """A host that cannot be reached or cannot be verified over SSH."""


class StepError(MultizoneError):
    """A bootstrap step that failed on a host."""


class LockBusy(MultizoneError):
    """Another apply holds the cluster's lock (exit code 1: try again later)."""
