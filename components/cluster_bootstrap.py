"""`pulumi up` bootstraps the cluster: a dynamic resource that runs `bootstrap apply`.

The resource's inputs are the inventory the program builds and the PKI (a bundle,
`bootstrap.pki.bundle`, kept in state as a secret so that any machine running `pulumi up`
finds it). The engine asks the provider four things:

- check (preview and up): the PKI is brought up to date locally, in a temporary directory,
  exactly as `apply` would (new hosts' certificates, renewals), and `apply`'s own plan
  (`execute(dry_run=True)`) runs against the hosts. Its lines become the input `plan`; the
  updated bundle becomes the input `pki`. The engine passes check only the old *inputs*, so
  the PKI that update will apply has to be in the inputs already: it is made here, not in
  update, and the next check starts from it. The node pools' join tokens are part of it
  (`local/join-tokens.json`): a pool's token is issued here when it has none or less than
  half its lifetime is left, with a plan line saying so.
- diff: a change when the inventory, the PKI or the plan differs from what the last apply
  left (its outputs hold `plan: []`), or when a pool's token in the last apply's PKI is
  missing or due. A converged cluster shows no change; otherwise `pulumi preview --diff`
  shows `plan` with the lines of the hosts and steps to change.
- create / update: the checked bundle into a temporary directory, then
  `execute(dry_run=False)`, the same code as `python -m bootstrap apply`. Outputs: the bundle
  after the run, `plan: []`, the lines applied, the admin kubeconfig (secret), the CA, and
  each node pool's current join token (`join_tokens`, secret), which the pools' launch
  templates put in their user data.
- delete: touches no host (they are being destroyed, or are to be kept); warns that the PKI
  leaves with this resource's state.

A first check has no old PKI: it takes the secret stack setting `multizone:pkiBundle` (a
hand-run PKI, exported with `bin/mzk pki export DIR FILE`) or starts a new PKI, and contacts
no host (fresh instances may still be booting; create waits for their SSH).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko
import pulumi
import pulumi.dynamic as dyn
from pulumi.runtime import rpc

from bootstrap import inventory as inventory_module
from bootstrap.apply_command import execute
from bootstrap.control_plane import encryption
from bootstrap.egress import tunnel_keys
from bootstrap.engine import ActionFailed
from bootstrap.errors import ConfigError, HostConnectionError, MultizoneError
from bootstrap.inventory import Inventory
from bootstrap.node import join_tokens
from bootstrap.pki import bundle as pki_bundle
from bootstrap.pki import generate
from bootstrap.ssh import Connections, HostsFailed

TYPE = "pulumi-python:dynamic/multizone:ClusterBootstrap"
# Inputs and outputs that hold key material: secret in state, never plain outputs.
SECRET_PROPERTIES = ("pki", "pki_import", "admin_kubeconfig", "join_tokens")
SSH_WAIT_SECONDS = 600.0  # new instances: cloud-init installs the host key, then sshd starts
SSH_WAIT_STEP = 10.0
EXPORT_HINT = "bin/mzk pki export STACK FILE"


def _unknown(value: Any) -> bool:
    """Whether a value is, or holds, something the engine does not know yet (preview)."""
    if value == rpc.UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_unknown(v) for v in value)
    return False


def _parse(raw: Any) -> Inventory:
    return inventory_module.parse(raw, source="the program's inventory")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _advance(inventory: Inventory, work: Path, now: dt.datetime | None = None) -> list[str]:
    """The local half of `execute`: the PKI, the Secrets encryption key, the egress tunnel
    keys and the node pools' join tokens brought up to date in `work` (what apply would
    write there first); the plan lines of the join tokens issued."""
    generate(inventory, work)
    encryption.ensure(work)
    tunnel_keys.ensure(work, inventory)
    return rotate_join_tokens(inventory, work, now or _now())


def rotate_join_tokens(inventory: Inventory, work: Path, now: dt.datetime) -> list[str]:
    """A new join token for every pool of the inventory that has none in `work` or whose
    token is due (less than half its lifetime left, `join_tokens.due`); the others are
    kept. The previous token is not revoked: it stays valid until it expires, so nodes
    launched from the previous user data still join. Returns one plan line per new token."""
    current = join_tokens.load(work)
    tokens, issued = join_tokens.refresh(inventory.node_pools, current, now)
    lines = []
    for name in issued:
        token, old = tokens[name], current.get(name)
        why = "it has none" if old is None else \
            f"the current one expires {old.expires:%Y-%m-%dT%H:%M:%SZ}"
        lines.append(f"local: join-tokens: new token for node pool {name}, valid "
                     f"{(token.expires - now).total_seconds() / 3600:.0f} h ({why})")
    if issued:
        join_tokens.save(work, tokens)
    return lines


def tokens_in(pki: str) -> dict[str, join_tokens.JoinToken]:
    """The join tokens a PKI bundle (the resource's `pki`) holds; none if it holds none."""
    source = "the stack's PKI (state)"
    found = pki_bundle.check(pki_bundle.loads(pki, source), source).get(
        join_tokens.STORE.as_posix())
    if found is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="mzk-pulumi-") as tmp:
        store = Path(tmp) / join_tokens.STORE
        store.parent.mkdir(parents=True)
        store.write_bytes(found[0])
        return join_tokens.load(Path(tmp))


def due_pools(raw_inventory: Any, pki: str, now: dt.datetime) -> list[str]:
    """The node pools of an inventory whose join token in `pki` is missing or due."""
    pools = _parse(raw_inventory).node_pools
    if not pools:
        return []
    tokens = tokens_in(pki) if pki else {}
    return [p.name for p in pools
            if join_tokens.due(tokens.get(p.name), p.join_token_hours, now)]


def _dump(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, sort_keys=True, separators=(",", ":"))


def _ssh_failures_are_transient(err: MultizoneError) -> bool:
    """A host still booting (refused, timed out) is worth waiting for; a wrong host key or
    a refused login is not."""
    failures: Sequence[BaseException] = list(err.failures.values()) \
        if isinstance(err, HostsFailed) else [err]
    return not any(isinstance(f, HostConnectionError | paramiko.AuthenticationException
                              | ConfigError) for f in failures)


def wait_for_ssh(inventory: Inventory, seconds: float = SSH_WAIT_SECONDS) -> None:
    """Until every host (through the bastion) answers over SSH with its pinned key."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with Connections(inventory) as connections:
                connections.run_on_hosts(inventory.hosts, lambda _h, r: r.run("true"),
                                         title="ssh")
            return
        except MultizoneError as err:
            if not _ssh_failures_are_transient(err) or time.monotonic() >= deadline:
                raise
            time.sleep(SSH_WAIT_STEP)


class BootstrapFailed(Exception):
    """What the engine shows when an apply fails: the report's lines, no host traceback."""


class ClusterBootstrapProvider(dyn.ResourceProvider):
    """See the module docstring: check plans, diff compares, create/update apply."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dyn.CheckResult:
        inputs = dict(news)
        inputs["pki_import"] = ""  # consumed here: never kept in state twice
        raw = news.get("inventory")
        stored = olds.get("pki") or ""
        if _unknown(raw):  # preview before the hosts exist: nothing to plan against
            inputs["plan"] = rpc.UNKNOWN
            inputs["pki"] = stored or rpc.UNKNOWN
            return dyn.CheckResult(inputs, [])
        try:
            inventory = _parse(raw)
        except ConfigError as err:
            return dyn.CheckResult(inputs, [dyn.CheckFailure("inventory", str(err))])
        imported = news.get("pki_import") or ""
        try:
            with tempfile.TemporaryDirectory(prefix="mzk-pulumi-") as tmp:
                work = Path(tmp) / "pki"
                plan = self._plan(inventory, work, stored, imported)
                plan += _advance(inventory, work)
                inputs["pki"] = _dump(pki_bundle.export_dir(work))
        except ConfigError as err:
            return dyn.CheckResult(inputs, [dyn.CheckFailure("pki", str(err))])
        inputs["plan"] = plan
        return dyn.CheckResult(inputs, [])

    @staticmethod
    def _plan(inventory: Inventory, work: Path, stored: str, imported: str) -> list[str]:
        """Fill `work` with the PKI to start from; return what apply would change."""
        if stored:
            current = pki_bundle.loads(stored, "the stack's PKI (state)")
            if imported:
                offered = pki_bundle.loads(imported, "multizone:pkiBundle")
                if not pki_bundle.same_cluster(current, offered):
                    raise ConfigError(
                        f"multizone:pkiBundle holds kubernetes-ca "
                        f"{pki_bundle.ca_fingerprint(offered)}, but the stack's state holds "
                        f"{pki_bundle.ca_fingerprint(current)}: the setting is only read when "
                        "the stack has no PKI yet; remove it (pulumi config rm "
                        "multizone:pkiBundle)")
            pki_bundle.import_dir(current, work)
            try:
                return execute(inventory, work, dry_run=True).lines()
            except ActionFailed as err:  # hosts that could not be planned (booting, say)
                return [*err.report.lines(), *(f"plan incomplete: {line.strip()}"
                                               for line in str(err).splitlines()[1:])]
            except ConfigError:
                raise
            except MultizoneError as err:
                return [f"plan incomplete: {' '.join(str(err).split())}"]
        if imported:
            offered = pki_bundle.loads(imported, "multizone:pkiBundle")
            pki_bundle.import_dir(offered, work, source="multizone:pkiBundle")
            origin = f"import multizone:pkiBundle (kubernetes-ca " \
                     f"{pki_bundle.ca_fingerprint(offered)})"
        else:
            origin = "new CAs"
        return [f"local: pki: {origin}",
                *(f"{h.name}: bootstrap: every step (new resource)" for h in inventory.hosts)]

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        keys = ("inventory", "pki", "plan")
        changed = any(_unknown(news.get(k)) or olds.get(k) != news.get(k) for k in keys)
        if not changed:  # the same inputs: still an update when a join token is due
            changed = self._tokens_due(olds, news)
        return dyn.DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    @staticmethod
    def _tokens_due(olds: dict[str, Any], news: dict[str, Any]) -> bool:
        """Whether a pool's token in the last apply's PKI (`olds`, the outputs) is missing or
        has less than half its lifetime left: then `pulumi up` rotates it (check issues it,
        update applies it, the launch templates get it), even with nothing else changed."""
        try:
            return bool(due_pools(news.get("inventory"), olds.get("pki") or "", _now()))
        except ConfigError:  # an inventory check refused, or a PKI update will refuse
            return True

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        outs = self._apply(props)
        digest = hashlib.sha256(outs["ca_certificate"].encode()).hexdigest()[:16]
        return dyn.CreateResult(f"{outs['inventory']['cluster']['name']}-{digest}", outs)

    def update(self, _id: str, _olds: dict[str, Any],
               news: dict[str, Any]) -> dyn.UpdateResult:
        return dyn.UpdateResult(self._apply(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        name = (props.get("inventory") or {}).get("cluster", {}).get("name", "the cluster")
        pulumi.log.warn(
            f"{name}: bootstrap resource deleted; no host was touched (the instances go with "
            "the stack, or stay as they are). Its PKI (CA keys, Secrets encryption key, "
            "egress tunnel keys) lived only in this resource's state and is gone with it: "
            f"to keep it, `{EXPORT_HINT}` before destroying, or restore it from a state "
            "backup")

    @staticmethod
    def _apply(props: dict[str, Any]) -> dict[str, Any]:
        inventory = _parse(props["inventory"])
        with tempfile.TemporaryDirectory(prefix="mzk-pulumi-") as tmp:
            work = Path(tmp) / "pki"
            pki_bundle.import_dir(pki_bundle.loads(props["pki"], "the checked PKI"), work)
            try:
                wait_for_ssh(inventory)
                report = execute(inventory, work, dry_run=False)
            except ActionFailed as err:
                lines = [*err.report.lines(), str(err)]
                raise BootstrapFailed("\n".join(lines)) from None
            except MultizoneError as err:
                raise BootstrapFailed(f"error: {err}") from None
            tokens = join_tokens.load(work)
            missing = [p.name for p in inventory.node_pools if p.name not in tokens]
            if missing:  # check issues them: a PKI that lost them is not ours to hand out
                raise BootstrapFailed(
                    f"error: no join token for node pool(s) {', '.join(missing)} in "
                    f"{join_tokens.STORE} after apply; their nodes could not join. Run "
                    "`pulumi up` again (its check issues them)")
            return {
                **props,
                "pki": _dump(pki_bundle.export_dir(work)),
                "pki_import": "",
                "plan": [],  # converged: the next check's plan is compared with this
                "applied": report.lines(),
                "admin_kubeconfig": (work / "local" / "admin.conf").read_text(),
                "ca_certificate": (work / "local" / "pki" / "ca.crt").read_text(),
                # pool -> "<id>.<secret>": what each pool's launch template hands its nodes.
                "join_tokens": {p.name: tokens[p.name].value for p in inventory.node_pools},
            }


class ClusterBootstrap(dyn.Resource, module="multizone", name="ClusterBootstrap"):
    """The bootstrap of every host in `inventory`; `admin_kubeconfig`, `pki` and
    `join_tokens` (node pool -> its current join token) are secrets."""

    inventory: pulumi.Output[dict[str, Any]]
    plan: pulumi.Output[list[str]]
    applied: pulumi.Output[list[str]]
    pki: pulumi.Output[str]
    admin_kubeconfig: pulumi.Output[str]
    ca_certificate: pulumi.Output[str]
    join_tokens: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, inventory: pulumi.Input[dict[str, Any]],
                 pki_import: pulumi.Input[str] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {
            "inventory": inventory,
            # Placeholders the provider's check fills in. Sent as secrets, so that the engine
            # (which strips secrets before a dynamic provider sees them) marks what check
            # returns under these names secret again.
            "pki": pulumi.Output.secret(""),
            "pki_import": pulumi.Output.secret(pki_import if pki_import is not None else ""),
            "plan": None,
            "applied": None,
            "admin_kubeconfig": None,
            "ca_certificate": None,
            "join_tokens": None,
        }
        super().__init__(
            ClusterBootstrapProvider(), name, props,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                additional_secret_outputs=list(SECRET_PROPERTIES))))
        # Secret in the program too, so that nothing derived from them is ever plain.
        self.pki = pulumi.Output.secret(self.pki)
        self.admin_kubeconfig = pulumi.Output.secret(self.admin_kubeconfig)
        self.join_tokens = pulumi.Output.secret(self.join_tokens)


def bundle_from_state(deployment: dict[str, Any]) -> dict[str, Any]:
    """The PKI bundle in a `pulumi stack export --show-secrets` document (the bootstrap
    resource's `pki` output); one ConfigError line when there is none."""
    resources = (deployment.get("deployment") or {}).get("resources") or [] \
        if isinstance(deployment, dict) else []
    found = [r for r in resources if isinstance(r, dict) and r.get("type") == TYPE]
    if len(found) != 1:
        raise ConfigError(f"the stack export holds {len(found)} {TYPE} resources, not one: "
                          "export a stack of this program after `pulumi up`")
    value = (found[0].get("outputs") or {}).get("pki")
    if isinstance(value, dict) and "plaintext" in value:  # --show-secrets: JSON text
        value = json.loads(value["plaintext"])
    if isinstance(value, dict) and "ciphertext" in value:
        raise ConfigError("the stack export holds the PKI encrypted; run `pulumi stack "
                          "export --show-secrets`")
    if not isinstance(value, str) or not value:
        raise ConfigError("the stack's bootstrap resource holds no PKI yet: run `pulumi up` "
                          "first")
    return pki_bundle.loads(value, "the stack's PKI (state)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m components.cluster_bootstrap FILE < stack-export.json`: the stack's PKI
    bundle into FILE (0600). bin/mzk pki export STACK FILE pipes `pulumi stack export` in."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: pulumi stack export --show-secrets | python -m "
              "components.cluster_bootstrap FILE", file=sys.stderr)
        return 2
    try:
        try:
            deployment = json.load(sys.stdin)
        except ValueError as err:
            raise ConfigError(f"stdin: not a `pulumi stack export` document ({err})") from err
        found = bundle_from_state(deployment)
        pki_bundle.write_file(found, args[0])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pki export: {len(found['files'])} files (kubernetes-ca "
          f"{pki_bundle.ca_fingerprint(found)}) -> {args[0]} (0600: it holds the CA keys)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
