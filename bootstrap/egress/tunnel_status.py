"""What the tunnel service tells: one `key=value` line per event on stderr, and each node's
tunnel state in the status file that `--check` and the bootstrap's `check` read.

Shipped to the control-plane hosts beside the tunnel service (its COMPANIONS) and run by their
python3 (3.9+): standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time

try:  # in the project
    from bootstrap.egress.tunnel_config import Node
except ImportError:  # on a host: shipped beside mzk-egress-tunnel
    from tunnel_config import Node  # type: ignore[no-redef]


def log(event: str, **fields: object) -> None:
    """One line on stderr: `ts=... event=... key=value ...`; values with spaces are quoted."""
    parts = [time.strftime("ts=%Y-%m-%dT%H:%M:%SZ", time.gmtime()), f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or not text.isprintable() or any(c in text for c in ' "=\\'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    print(" ".join(parts), file=sys.stderr, flush=True)


class StatusFile:
    """Each node's tunnel state, on disk for `--check` and the bootstrap's `check`."""

    def __init__(self, path: str, nodes: tuple[Node, ...]) -> None:
        self.path = path
        now = int(time.time())
        self.nodes = {n.name: {"state": "down", "reason": "not connected yet", "since": now,
                               "address": n.address} for n in nodes}

    def set(self, node: str, state: str, reason: str) -> None:
        entry = self.nodes[node]
        if entry["state"] == state and entry["reason"] == reason:
            return
        entry.update(state=state, reason=reason, since=int(time.time()))
        self.write()

    def write(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.nodes, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log("status", outcome="failed", path=self.path, reason=e.strerror or str(e))
