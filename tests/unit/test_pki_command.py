"""`python -m bootstrap pki INVENTORY --out DIR`: bad input is one line on stderr and exit
code 2, never a traceback, and nothing is created or changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = "examples/inventory.yaml"


def pki(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootstrap", "pki", INVENTORY, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert proc.stdout == ""
    for word in words:
        assert word in proc.stderr


def unwritable(tmp_path: Path) -> Path:
    """A place this user cannot make a directory in (root may write anywhere but sysfs)."""
    if os.geteuid() == 0:
        return Path("/sys/mzk-pki-test/pki")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked / "pki"


@pytest.fixture
def places(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("the operator's file\n")
    return tmp_path, a_file


def test_empty_out(places):
    assert_refused(pki("--out", ""), "--out", "empty")


def test_out_naming_a_file(places):
    _tmp, a_file = places
    assert_refused(pki("--out", str(a_file)), str(a_file), "is a file")
    assert a_file.read_text() == "the operator's file\n"


def test_out_under_a_file(places):
    _tmp, a_file = places
    assert_refused(pki("--out", str(a_file / "sub" / "pki")), f"{a_file} is a file")
    assert a_file.is_file()


def test_out_in_an_unwritable_place(places):
    tmp, _a_file = places
    target = unwritable(tmp)
    assert_refused(pki("--out", str(target)), str(target), "cannot be created")
    assert not target.exists()


def test_out_that_is_not_a_pki_directory(places):
    tmp, a_file = places
    assert_refused(pki("--out", str(tmp)), "not a PKI directory")
    assert sorted(p.name for p in tmp.iterdir()) == ["file"]


def test_out_that_is_a_link(places):
    tmp, _a_file = places
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real", target_is_directory=True)
    assert_refused(pki("--out", str(tmp / "link")), "is a symbolic link")
    assert list((tmp / "real").iterdir()) == []


@pytest.mark.parametrize("workers", ["0", "-1", "100000", "two"])
def test_workers_out_of_bounds(places, workers):
    tmp, _a_file = places
    assert_refused(pki("--out", str(tmp / "pki"), "--workers", workers), "--workers", workers)
    assert not (tmp / "pki").exists()


def test_forget_lost_key_refuses_a_key_never_made_or_still_present(tmp_path):
    out = tmp_path / "pki"
    assert pki("--out", str(out), "--quiet").returncode == 0
    before = sorted(p.name for p in out.rglob("*"))
    assert_refused(pki("--out", str(out), "--forget-lost-key", "local/pki/ca.key"),
                   "--forget-lost-key local/pki/ca.key: not a key this PKI made")
    assert sorted(p.name for p in out.rglob("*")) == before


def test_forget_lost_key_takes_a_lost_key_off_the_list(tmp_path):
    from bootstrap.control_plane import encryption
    from bootstrap.pki import key_ledger
    out = tmp_path / "pki"
    assert pki("--out", str(out), "--quiet").returncode == 0
    encryption.ensure(out)
    (out / "local/encryption-keys.yaml").unlink()
    proc = pki("--out", str(out), "--quiet", "--forget-lost-key", "local/encryption-keys.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "local/encryption-keys.yaml: forgotten" in proc.stdout
    with key_ledger.Tree.open(str(out)) as tree:
        assert "local/encryption-keys.yaml" not in key_ledger.listed(tree)
