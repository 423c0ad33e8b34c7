"""The bootstrap resource's provider (components/cluster_bootstrap.py) on the real lab.

The Pulumi engine is not here, so the test plays its part: it calls check, diff, create and
update in the order `pulumi up` does, feeding each check the inputs the engine would have
stored (check's result) and each diff the outputs the last apply left. The provider must
converge the lab exactly as `python -m bootstrap apply` does: create applies, a second
check plans nothing and diff shows no change, a cheap real change (one more operator key)
appears in `plan` (as the inventory line that changed: check contacts no host) and update
applies it on every host, and the PKI in state is the whole PKI (a fresh directory made from
it plans nothing).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bootstrap.apply_command import execute
from bootstrap.inventory import parse
from bootstrap.pki import bundle
from components.cluster_bootstrap import ClusterBootstrapProvider

from .conftest import Lab, lab_unavailable, on, require_k8s_binaries, running_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    require_k8s_binaries()
    with running_lab(tmp_path_factory, "pulumi", workers=3) as lab:
        yield lab


def program_inputs(inventory: dict[str, Any], pki_import: str = "") -> dict[str, Any]:
    """What `ClusterBootstrap` registers (secrets arrive unwrapped: the engine strips them
    before a dynamic provider sees them)."""
    return {"inventory": inventory, "pki": "", "pki_import": pki_import, "plan": None,
            "applied": None, "admin_kubeconfig": None, "ca_certificate": None}


def new_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode() + " ops@test"


def test_the_provider_converges_the_lab_as_apply_does(plab: Lab) -> None:
    provider = ClusterBootstrapProvider()
    raw = yaml.safe_load((plab.dir / "inventory.yaml").read_text())
    hosts = sorted(h["name"] for h in raw["hosts"])
    # The lab issued its PKI (its load balancers check API servers against that CA): the
    # stack starts from it, as `multizone:pkiBundle` would hand it over.
    lab_bundle = bundle.export_dir(plab.dir / "pki")
    lab_ca = (plab.dir / "pki" / "local" / "pki" / "ca.crt").read_text()

    # pulumi up, first time: check (no old inputs), then create.
    first = provider.check({}, program_inputs(raw, json.dumps(lab_bundle)))
    assert first.failures == []
    assert first.inputs["pki_import"] == ""  # consumed, never kept twice in state
    assert first.inputs["plan"][0].startswith("local: pki: import multizone:pkiBundle")
    assert bundle.same_cluster(json.loads(first.inputs["pki"]), lab_bundle)
    created = provider.create(first.inputs)
    outs = created.outs
    assert outs is not None
    assert outs["plan"] == [] and outs["pki_import"] == ""
    applied_hosts = {line.split(":")[0] for line in outs["applied"]}
    assert set(hosts) <= applied_hosts  # every host was bootstrapped
    assert outs["ca_certificate"] == lab_ca
    assert "client-key-data" in outs["admin_kubeconfig"]
    assert outs["inventory"] == raw
    for host in hosts:  # really applied: the API server answers on every control-plane host
        if "control-plane" in next(h for h in raw["hosts"] if h["name"] == host)["roles"]:
            assert on(plab, host, "test -s /etc/kubernetes/pki/apiserver.crt").ok

    # pulumi preview, nothing changed: the plan is empty and diff says no change.
    stored = first.inputs  # the engine stores check's result as the inputs
    again = provider.check(stored, program_inputs(raw))
    assert again.failures == [] and again.inputs["plan"] == []
    assert again.inputs["pki"] == outs["pki"]
    assert provider.diff(created.id, outs, again.inputs).changes is False

    # A cheap real change: one more operator key. The plan names it, diff shows it.
    changed_raw = copy.deepcopy(raw)
    new_key = new_public_key()
    changed_raw["ssh"]["authorized_keys"] = [*raw["ssh"].get("authorized_keys", []), new_key]
    planned = provider.check(again.inputs, program_inputs(changed_raw))
    assert planned.failures == []
    plan = planned.inputs["plan"]
    # A key is too long to print: the line names the setting (set, or changed).
    assert plan in (["inventory: ssh.authorized_keys: changed"],
                    ["inventory: ssh.authorized_keys: set"]), plan
    assert planned.inputs["pki"] == outs["pki"]  # the PKI is not touched by it
    assert provider.diff(created.id, outs, planned.inputs).changes is True

    # pulumi up: update writes the key on every host, and nothing else.
    updated = provider.update(created.id, outs, planned.inputs).outs
    assert updated is not None
    assert {line.split(": ")[1] for line in updated["applied"]} == {"ssh-access"}, updated
    assert {line.split(":")[0] for line in updated["applied"]} == set(hosts), updated
    assert updated["plan"] == []
    for host in hosts:
        keys = on(plab, host, "cat ~/.ssh/authorized_keys").stdout
        assert new_key.split()[1] in keys, host  # the inventory keeps type and key only

    # Converged again.
    final = provider.check(planned.inputs, program_inputs(changed_raw))
    assert final.inputs["plan"] == []
    assert provider.diff(created.id, updated, final.inputs).changes is False

    # The state's bundle is the whole PKI: another machine rebuilds the directory from it
    # and finds nothing to do.
    with tempfile.TemporaryDirectory(prefix="mzk-roundtrip-") as tmp:
        fresh = Path(tmp) / "pki"
        bundle.import_dir(json.loads(updated["pki"]), fresh)
        assert execute(parse(changed_raw), fresh, dry_run=True).lines() == []
