"""The operator's keys on every host: `ssh.user`'s authorized_keys holds exactly the
inventory's `ssh.authorized_keys` plus the key this run logs in with.

This is how the operator key rotates without replacing hosts (user data, read at first
boot only, no longer decides): put the new public key in the settings and apply with the
old private key (both are accepted now); then switch `ssh.private_key` to the new one and
apply again (the old one is dropped). The key a run logs in with is never removed, so no
run can lock the tool out. An inventory without `ssh.authorized_keys` leaves the file
alone. The file's state comes with the facts, so a converged host costs no round trip.
"""

from __future__ import annotations

import posixpath
import shlex

from bootstrap.egress import tunnel_access
from bootstrap.engine import HostContext, Step, all_hosts
from bootstrap.hostfiles import FileSpec, parse_states, state_script, sync
from bootstrap.ssh import load_private_key

_STATES = "MZK_BASTION_FILE_STATES"


def _login_key(ctx: HostContext) -> str:
    cached = ctx.shared.get("login_public_key")
    if cached is None:
        key = load_private_key(ctx.inventory.ssh.private_key)
        cached = f"{key.get_name()} {key.get_base64()}"
        ctx.shared["login_public_key"] = cached
    return str(cached)


def facts_script(user: str) -> str:
    """`ssh_user <name> <group> <home>` of the login user (for the facts round trip)."""
    u = shlex.quote(user)
    return (f'echo "ssh_user $(id -un {u}) $(id -gn {u}) '
            f'$(getent passwd {u} | cut -d: -f6)"')


def desired(ctx: HostContext, tunnels: bool = True) -> FileSpec | None:
    keys = ctx.inventory.ssh.authorized_keys
    found = str(ctx.facts.get("ssh_user", "")).split()
    if not keys or len(found) != 3:
        return None
    user, group, home = found
    lines = sorted(dict.fromkeys([*keys, _login_key(ctx)]))
    lines += tunnel_lines(ctx) if tunnels else []
    content = ("# Written by multizone-k8s bootstrap from ssh.authorized_keys; local edits "
               "are overwritten.\n" + "".join(f"{line}\n" for line in lines)).encode()
    return FileSpec(posixpath.join(home, ".ssh", "authorized_keys"), content, 0o600, user,
                    group)


def tunnel_lines(ctx: HostContext) -> list[str]:
    """On a node in `ssh-tunnel` mode: each control-plane host's tunnel key, allowed to
    forward to this node's own address on the tunnel ports and to do nothing else."""
    if not ctx.host.has("node") or ctx.inventory.cluster.egress != "ssh-tunnel":
        return []
    from bootstrap.steps.egress import tunnel_ports  # egress imports the engine's steps

    keys = ctx.shared["tunnel_keys"].keys
    return [tunnel_access.authorized_keys_line(
        keys[cp.name].public_line, ctx.host.address, tunnel_ports(ctx.inventory),
        f"mzk-egress-tunnel@{cp.name}") for cp in ctx.inventory.control_plane
        if cp.name in keys and cp.name != ctx.name]


def watched_paths(ctx: HostContext) -> list[str]:
    """Where the file most likely is (the facts learn the home directory in the same round
    trip; a host where it lies elsewhere costs one more)."""
    if not ctx.inventory.ssh.authorized_keys:
        return []
    user = ctx.inventory.ssh.user
    home = "/root" if user == "root" else f"/home/{user}"
    return [f"{home}/.ssh/authorized_keys"]


def converge(ctx: HostContext) -> None:
    spec = desired(ctx)
    if spec is not None:
        written, _ = sync(ctx.runner, [spec], dry_run=ctx.dry_run,
                          known=ctx.facts.get("file_states"))
        for path in written:
            tunnels = len(tunnel_lines(ctx))
            ctx.note(f"write {path} ({len(ctx.inventory.ssh.authorized_keys)} operator "
                     "key(s) and the key this run logs in with"
                     + (f", {tunnels} control-plane tunnel key(s))" if tunnels else ")"))
    if ctx.host == ctx.inventory.hosts[0]:
        _bastion(ctx)


def _bastion(ctx: HostContext) -> None:
    """The bastion too, or the new key would stop at the bastion (its change is noted
    on the first host, which carries it out)."""
    runner = ctx.shared.get("bastion_runner")
    if runner is None or not ctx.inventory.ssh.authorized_keys:
        return
    from bootstrap.steps.facts import parse  # facts imports this module

    bastion = HostContext(host=ctx.host, runner=runner, inventory=ctx.inventory,
                          dry_run=ctx.dry_run, shared=ctx.shared)
    # One round trip: the user's home and the state of where the file most likely is.
    guess = watched_paths(bastion)
    out = runner.run("sh -s", stdin=(facts_script(ctx.inventory.ssh.user) + "\n"
                                     f"echo {_STATES}\n" + state_script(guess)).encode())
    facts_part, _, states_part = out.stdout.partition(f"{_STATES}\n")
    bastion.facts.update(parse(facts_part))
    spec = desired(bastion, tunnels=False)
    if spec is None:
        return
    known = parse_states(guess, states_part) if spec.path in guess else None
    written, _ = sync(runner, [spec], dry_run=ctx.dry_run, known=known)
    for path in written:
        ctx.note(f"write {path} on the bastion ({len(ctx.inventory.ssh.authorized_keys)} "
                 "operator key(s) and the key this run logs in with)")


SSH_ACCESS = Step("ssh-access", all_hosts, run=converge)
