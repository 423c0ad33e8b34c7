"""The bootstrap action: one ordered list of steps, read top to bottom.

Each module holds one step (or two closely related ones); `ACTION` is what `apply` and
`plan` run.
"""

from bootstrap.steps.binaries import BINARIES
from bootstrap.steps.etcd import ETCD, ETCD_RETIRE
from bootstrap.steps.facts import FACTS
from bootstrap.steps.pki import PLACE_PKI
from bootstrap.steps.preflight import PREFLIGHT

ACTION = (FACTS, PREFLIGHT, BINARIES, PLACE_PKI, ETCD, ETCD_RETIRE)

__all__ = ["ACTION"]
