"""The nodes' half of the egress path: the firewall against the control plane, and in
`konnectivity` mode the proxy-agent.

Two steps around the control plane's switch (`bootstrap.steps.egress`), so that a change of
mode never leaves an API server without a way to its nodes:
- EGRESS_NODES (before): the firewall of the new mode (SSH from the control plane admitted
  in `ssh-tunnel` mode only; connections already open stay, so tunnels carried over SSH
  survive until their control-plane host switches), and the agents of `konnectivity` mode,
  which dial out and wait for their servers;
- EGRESS_NODES_RETIRE (after): agents of a mode the cluster left are stopped and removed.
Everything is decided from the facts: a converged node costs no round trip.
"""

from __future__ import annotations

from bootstrap.egress import firewall, hostconfig
from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.errors import StepError
from bootstrap.hostfiles import FileSpec, put_many
from bootstrap.inventory import Host, Inventory
from bootstrap.services import (
    Service,
    ServiceStatus,
    change_from_facts,
    inputs_digest,
    manager_from,
    unit_path,
)

AGENT_UNIT = unit_path(hostconfig.PROXY_AGENT)


def _nodes(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.nodes


def watched_paths(ctx: HostContext) -> list[str]:
    if not ctx.host.has("node"):
        return []
    return [firewall.RULES_FILE, firewall.UNIT_FILE, AGENT_UNIT]


def rules_for(ctx: HostContext) -> bytes:
    addresses = [h.address for h in ctx.inventory.control_plane if h.name != ctx.name]
    return firewall.ruleset(addresses, ctx.host.ssh_port,
                            allow_ssh=ctx.inventory.cluster.egress == "ssh-tunnel")


def agent_service(ctx: HostContext) -> Service:
    binary, identity = ctx.facts["konnectivity"], ctx.facts["konnectivity_id"]
    command = hostconfig.proxy_agent_command(ctx.inventory, ctx.host, binary)
    contents = {f.path: f.content for f in ctx.shared["pki"].hosts[ctx.name].files}
    return Service(name=hostconfig.PROXY_AGENT, command_line=command,
                   env={"MZK_INPUTS": inputs_digest(identity, command, contents)},
                   description="Konnectivity agent: the control plane's way to this node")


def converge(ctx: HostContext) -> None:
    states = ctx.facts.get("file_states") or {}
    rules = rules_for(ctx)
    files = [FileSpec(firewall.RULES_FILE, rules, 0o644)]
    if ctx.facts.get("systemd"):
        files.append(FileSpec(firewall.UNIT_FILE, firewall.BOOT_UNIT, 0o644))
    todo = [f for f in files if states.get(f.path, "?") != f.state()]
    loaded = ctx.facts.get("egress_firewall") == firewall.digest_of(rules)
    if (todo or not loaded) and not ctx.facts.get("bin", {}).get("nft"):
        raise StepError(f"{ctx.name}: nft not found; install nftables (the node's firewall "
                        "against the control plane needs it)")
    for f in todo:
        ctx.note(f"write {f.path}")
    if not loaded:
        mode = ("SSH only" if ctx.inventory.cluster.egress == "ssh-tunnel" else "nothing")
        ctx.note(f"load the firewall: from the control plane, {mode}")
    wanted = agent_service(ctx) if ctx.inventory.cluster.egress == "konnectivity" else None
    status: dict[str, ServiceStatus] = ctx.facts.get("services", {})
    agent = None if wanted is None else change_from_facts(
        wanted, states.get(AGENT_UNIT), status.get(hostconfig.PROXY_AGENT))
    if agent:
        ctx.note(agent)
    if ctx.dry_run:
        return
    if todo:
        put_many(ctx.runner, todo)
    if not loaded:
        enable = (f" && systemctl enable --quiet {firewall.UNIT}.service"
                  if ctx.facts.get("systemd") else "")
        ctx.runner.run(firewall.LOAD + enable)
    if agent and wanted is not None:
        manager_from(ctx.name, bool(ctx.facts.get("lab")),
                     bool(ctx.facts.get("systemd"))).ensure(ctx.runner, wanted)


def retire(ctx: HostContext) -> None:
    """After the control plane switched: the agent goes from a host that is no node (any
    more), or from every node when the cluster left konnectivity mode."""
    node = ctx.host.has("node")
    if node and ctx.inventory.cluster.egress == "konnectivity":
        return
    if node:
        status = ctx.facts.get("services", {}).get(hostconfig.PROXY_AGENT)
        present = (ctx.facts.get("file_states") or {}).get(AGENT_UNIT) is not None
        present = present or bool(status and status.running)
    else:
        present = bool(ctx.facts.get("agent_traces"))
    if not present:
        return
    why = f"egress is {ctx.inventory.cluster.egress}" if node else "no longer a node"
    ctx.note(f"stop {hostconfig.PROXY_AGENT} and remove its unit ({why})")
    if ctx.dry_run:
        return
    manager_from(ctx.name, bool(ctx.facts.get("lab")),
                 bool(ctx.facts.get("systemd"))).remove(ctx.runner, hostconfig.PROXY_AGENT)


EGRESS_NODES = Step("egress-nodes", _nodes, run=converge)
EGRESS_NODES_RETIRE = Step("egress-nodes-retire", all_hosts, run=retire)
FACTS_SCRIPT = firewall.FACTS_SCRIPT
