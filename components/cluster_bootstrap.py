"""`pulumi up` bootstraps the cluster: a dynamic resource that runs `bootstrap apply`.

The resource's inputs are the inventory the program builds and the PKI (a bundle,
`bootstrap.pki.bundle`, kept in state as a secret so that any machine running `pulumi up`
finds it). The engine asks the provider four things:

- check (preview and up): no network, no SSH key needed. The PKI is brought up to date
  locally, in a temporary directory, exactly as `apply` would first (new hosts'
  certificates, renewals, the Secrets encryption key, egress tunnel keys); the updated
  bundle becomes the input `pki`. The input `plan` is what changed between the inputs of
  the last `up` (check's `olds`) and these (`components.bootstrap_plan`): hosts added,
  removed or changed, cluster settings changed, PKI files issued or renewed; `[]` when
  nothing did. Drift on the hosts themselves is `python -m bootstrap plan`'s job. The
  engine passes check only the old *inputs*, so the PKI that update will apply has to be
  in the inputs already: it is made here, not in update, and the next check starts from it.
- diff: a change when the inventory, the PKI or the plan differs from what the last apply
  left (its outputs hold `plan: []`); never a replacement. Equal inputs and no PKI file
  due give no change, so a converged stack previews clean anywhere.
- create / update: the checked bundle into a temporary directory, then
  `execute(dry_run=False)`, the same code as `python -m bootstrap apply`. Outputs: the bundle
  after the run, `plan: []`, the lines applied, the admin kubeconfig (secret), the CA.
- delete: touches no host (they are being destroyed, or are to be kept); warns that the PKI
  leaves with this resource's state.

A first check has no old PKI: it takes the secret stack setting `multizone:pkiBundle` (a
hand-run PKI, exported with `bin/mzk pki export DIR FILE`) or starts a new PKI, and contacts
no host (fresh instances may still be booting; create waits for their SSH).
"""

from __future__ import annotations

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
from bootstrap.host_fanout import HostsFailed
from bootstrap.inventory import Inventory
from bootstrap.pki import bundle as pki_bundle
from bootstrap.pki import generate
from bootstrap.pki.issue import PKIResult
from bootstrap.ssh import Connections
from components.bootstrap_plan import inventory_changes, pki_changes

TYPE = "pulumi-python:dynamic/multizone:ClusterBootstrap"
# Inputs and outputs that hold key material: secret in state, never plain outputs.
SECRET_PROPERTIES = ("pki", "pki_import", "admin_kubeconfig")
SSH_WAIT_SECONDS = 600.0  # new instances: cloud-init installs the host key, then sshd starts
SSH_WAIT_STEP = 10.0
EXPORT_HINT = "bin/mzk pki export STACK FILE"
STATE_PKI = "the stack's PKI (state)"


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


def advance(inventory: Inventory, work: Path) -> PKIResult:
    """The local half of `execute`: the PKI, the Secrets encryption key and the egress
    tunnel keys brought up to date in `work` (what apply would write there first). No
    network: certificates are issued or renewed from the inventory and the clock alone."""
    result = generate(inventory, work)
    encryption.ensure(work)
    tunnel_keys.ensure(work, inventory)
    return result


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
    """See the module docstring: check computes the PKI and the plan from the inputs alone
    (no host is contacted), diff compares, create/update apply."""

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
                start, origin = self._start(work, stored, imported)
                result = advance(inventory, work)
                updated = pki_bundle.export_dir(work)
        except ConfigError as err:
            return dyn.CheckResult(inputs, [dyn.CheckFailure("pki", str(err))])
        inputs["pki"] = _dump(updated)
        if origin is None:  # an update: what changed in the inputs since the last up
            inputs["plan"] = [*inventory_changes(olds.get("inventory"), raw),
                              *pki_changes(start, updated, result)]
        else:
            inputs["plan"] = [origin, *(f"{h.name}: bootstrap: every step (new resource)"
                                        for h in inventory.hosts)]
        return dyn.CheckResult(inputs, [])

    @staticmethod
    def _start(work: Path, stored: str, imported: str) -> tuple[dict[str, Any], str | None]:
        """Fill `work` with the PKI to start from: the state's, else an imported one, else
        none (new CAs). Returns that bundle and, for a first check, the plan line that says
        where the PKI comes from (None for an update)."""
        if stored:
            current = pki_bundle.loads(stored, STATE_PKI)
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
            return current, None
        if imported:
            offered = pki_bundle.loads(imported, "multizone:pkiBundle")
            pki_bundle.import_dir(offered, work, source="multizone:pkiBundle")
            return offered, (f"local: pki: import multizone:pkiBundle (kubernetes-ca "
                             f"{pki_bundle.ca_fingerprint(offered)})")
        return {}, "local: pki: new CAs"

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        """A change exactly when an input differs from what the last apply left; the
        outputs' `plan` is `[]`, so a non-empty plan is always a change."""
        keys = ("inventory", "pki", "plan")
        changed = any(_unknown(news.get(k)) or olds.get(k) != news.get(k) for k in keys)
        return dyn.DiffResult(changes=changed, replaces=[], delete_before_replace=False)

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
            return {
                **props,
                "pki": _dump(pki_bundle.export_dir(work)),
                "pki_import": "",
                "plan": [],  # converged: the next check's plan is compared with this
                "applied": report.lines(),
                "admin_kubeconfig": (work / "local" / "admin.conf").read_text(),
                "ca_certificate": (work / "local" / "pki" / "ca.crt").read_text(),
            }


class ClusterBootstrap(dyn.Resource, module="multizone", name="ClusterBootstrap"):
    """The bootstrap of every host in `inventory`; `admin_kubeconfig` and `pki` are
    secrets."""

    inventory: pulumi.Output[dict[str, Any]]
    plan: pulumi.Output[list[str]]
    applied: pulumi.Output[list[str]]
    pki: pulumi.Output[str]
    admin_kubeconfig: pulumi.Output[str]
    ca_certificate: pulumi.Output[str]

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
        }
        super().__init__(
            ClusterBootstrapProvider(), name, props,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                additional_secret_outputs=list(SECRET_PROPERTIES))))
        # Secret in the program too, so that nothing derived from them is ever plain.
        self.pki = pulumi.Output.secret(self.pki)
        self.admin_kubeconfig = pulumi.Output.secret(self.admin_kubeconfig)


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
    allow_in_tree = pki_bundle.IN_TREE_FLAG in args
    args = [a for a in args if a != pki_bundle.IN_TREE_FLAG]
    if len(args) != 1:
        print("usage: pulumi stack export --show-secrets | python -m "
              f"components.cluster_bootstrap FILE [{pki_bundle.IN_TREE_FLAG}]", file=sys.stderr)
        return 2
    try:
        if not allow_in_tree:  # before reading the state: none of it lands in a checkout
            pki_bundle.refuse_in_tree(args[0])
        try:
            deployment = json.load(sys.stdin)
        except ValueError as err:
            raise ConfigError(f"stdin: not a `pulumi stack export` document ({err})") from err
        found = bundle_from_state(deployment)
        pki_bundle.write_file(found, args[0], allow_in_tree=allow_in_tree)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pki export: {len(found['files'])} files (kubernetes-ca "
          f"{pki_bundle.ca_fingerprint(found)}) -> {args[0]} (0600: it holds the CA keys)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
