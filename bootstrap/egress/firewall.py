"""The nodes' firewall against the control plane (nftables), as text.

Seed 001: the API server's connections to nodes must not be reachable directly on an
untrusted network. So a node accepts no new connection from a control-plane host, except,
in `ssh-tunnel` mode, SSH (the tunnels' carrier). Everything else a node does is left as
it was: the table only drops traffic from the control-plane addresses, and accepts
loopback and replies to connections the node opened (a Konnectivity agent dialing out).

The ruleset replaces our table in one transaction (`nft -f`: create, delete, create), so a
reload never leaves a moment without it, and it is the same file a boot loads again
(systemd hosts: `mzk-egress-firewall.service`). Its comment carries the digest of the
file, which the facts read back to know, without a second round trip, that the loaded
table is ours and current.
"""

from __future__ import annotations

import hashlib
import ipaddress

TABLE = "mzk_egress"
RULES_FILE = "/etc/mzk/egress-firewall.nft"
UNIT = "mzk-egress-firewall"
UNIT_FILE = f"/etc/systemd/system/{UNIT}.service"
COMMENT_PREFIX = "multizone-k8s egress "


def ruleset(control_plane: list[str], ssh_port: int, allow_ssh: bool) -> bytes:
    """The table for a node: `control_plane` addresses, the node's SSH port."""
    v4 = sorted({a for a in control_plane if ipaddress.ip_address(a).version == 4})
    v6 = sorted({a for a in control_plane if ipaddress.ip_address(a).version == 6})
    body = [f"table inet {TABLE} {{"]
    digest_line = len(body)
    body.append("")  # the comment, filled in below
    if v4:
        body += ["  set control_plane_v4 {", "    type ipv4_addr",
                 f"    elements = {{ {', '.join(v4)} }}", "  }"]
    if v6:
        body += ["  set control_plane_v6 {", "    type ipv6_addr",
                 f"    elements = {{ {', '.join(v6)} }}", "  }"]
    body += ["  chain input {", "    type filter hook input priority filter; policy accept;",
             '    iifname "lo" accept', "    ct state established,related accept"]
    for family, name in (("ip", "control_plane_v4"), ("ip6", "control_plane_v6")):
        if (family == "ip" and not v4) or (family == "ip6" and not v6):
            continue
        if allow_ssh:
            body.append(f"    {family} saddr @{name} tcp dport {ssh_port} accept")
        body.append(f"    {family} saddr @{name} counter drop")
    body += ["  }", "}"]
    digest = hashlib.sha256("\n".join(body).encode()).hexdigest()[:16]
    body[digest_line] = f'  comment "{COMMENT_PREFIX}{digest}"'
    # Create (so the delete cannot fail), delete, create: one transaction under `nft -f`.
    return (f"#!/usr/sbin/nft -f\n# Written by multizone-k8s bootstrap; local edits are "
            f"overwritten.\ntable inet {TABLE}\ndelete table inet {TABLE}\n"
            + "\n".join(body) + "\n").encode()


def digest_of(rules: bytes) -> str:
    """The digest a ruleset's comment carries (what the loaded table reports)."""
    marker = f'comment "{COMMENT_PREFIX}'.encode()
    start = rules.index(marker) + len(marker)
    return rules[start:rules.index(b'"', start)].decode()


# The loaded table's digest (for the facts round trip; no line when there is no table or
# no nft). One process, nft; the comment line `comment "multizone-k8s egress <digest>"` is
# picked out with shell built-ins.
FACTS_SCRIPT = (f"nft list table inet {TABLE} 2>/dev/null | while read -r k _ _ d; do "
                '[ "$k" = comment ] && echo "egress_firewall ${d%?}"; done; true')

LOAD = f"nft -f {RULES_FILE}"
REMOVE = f"nft delete table inet {TABLE} 2>/dev/null; true"

BOOT_UNIT = f"""\
# Written by multizone-k8s bootstrap; local edits are overwritten.
[Unit]
Description=multizone-k8s: nodes refuse direct connections from the control plane
Wants=network-pre.target
Before=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f {RULES_FILE}

[Install]
WantedBy=multi-user.target
""".encode()
