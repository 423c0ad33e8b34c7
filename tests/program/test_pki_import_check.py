"""The bootstrap resource's first check refuses a `multizone:pkiBundle` whose keys do not
belong to its certificates: one CheckFailure line on `pki`, naming the setting and the file,
no traceback; the same bundle, whole, imports."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bootstrap.pki import bundle, generate
from components.cluster_bootstrap import ClusterBootstrapProvider
from tests.unit.pki_support import example_data, load


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = []
    for name in ("ours", "theirs"):
        where = tmp_path_factory.mktemp(name) / "pki"
        generate(load(example_data("ecdsa")), where, workers=1)
        made.append(where)
    return made[0], made[1]


def first_check(pki_import: str) -> Any:
    raw = copy.deepcopy(example_data("ecdsa"))
    raw["ssh"]["private_key"] = "/nonexistent/mzk-test/id_ed25519"
    inputs = {"inventory": raw, "pki": "", "pki_import": pki_import, "plan": None,
              "applied": None, "admin_kubeconfig": None, "ca_certificate": None}
    return ClusterBootstrapProvider().check({}, inputs)


def test_a_bundle_with_another_clusters_ca_key_fails_the_check_in_one_line(
        two_pkis: tuple[Path, Path]) -> None:
    ours, theirs = two_pkis
    exported = bundle.export_dir(ours)
    exported["files"]["local/pki/ca.key"]["content"] = base64.b64encode(
        (theirs / "local/pki/ca.key").read_bytes()).decode()
    result = first_check(json.dumps(exported))
    assert len(result.failures) == 1
    (failure,) = result.failures
    assert failure.property == "pki"
    assert failure.reason.startswith("multizone:pkiBundle: local/pki/ca.key: does not match "
                                     "local/pki/ca.crt")
    assert "\n" not in failure.reason and "Traceback" not in failure.reason


def test_the_whole_bundle_passes_the_check(two_pkis: tuple[Path, Path]) -> None:
    ours, _ = two_pkis
    exported = bundle.export_dir(ours)
    result = first_check(json.dumps(exported))
    assert result.failures == []
    assert bundle.ca_fingerprint(json.loads(result.inputs["pki"])) == \
        bundle.ca_fingerprint(exported)
