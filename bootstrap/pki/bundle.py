"""A PKI directory as one JSON-able value, and back: how the PKI travels between machines.

The PKI directory (CAs, every host's files, the Secrets encryption key, the egress tunnel
keys) is the cluster's one piece of local state. `pulumi up` keeps it in the stack's state as
a secret (components/cluster_bootstrap.py), and a person running `python -m bootstrap apply`
keeps it on disk; a bundle carries it from one to the other:

    {"format": "multizone-k8s/pki-bundle", "version": 1,
     "files": {"local/pki/ca.crt": {"content": "<base64>", "mode": 420}, ...}}

Export reads only regular files, never through a link. Import checks the whole bundle before
anything is written: its form; every private key against its certificate or public half and
every certificate against the bundle's CA (`bundle_verify`); a target directory that is not
new, empty or a PKI directory, or whose CAs are not the bundle's (naming both fingerprints:
merging two clusters' PKIs would hand hosts a CA they do not trust), or whose service-account
key, tunnel keys or Secrets encryption keys the bundle would replace with others. Then it
writes all or nothing: the merged result goes into a new directory beside the target, by the
PKI's one atomic writer (`files.Tree`: no links followed, 0600 keys, 0700 private
directories), and is swapped in whole (`dir_swap`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bootstrap.errors import ConfigError, PKIError
from bootstrap.pki import bundle_verify, dir_swap, files
from bootstrap.pki.files import PRIVATE_DIR_MODE, Tree
from bootstrap.pki.issue import CERT_MODE, KEY_MODE, LOCAL, MANIFEST_PATH, open_out
from bootstrap.pki.table import CAS
from bootstrap.steps.guard import fingerprint

FORMAT = "multizone-k8s/pki-bundle"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024  # a bundle file larger than this is not ours
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_TEMP = re.compile(r"\..+\.[0-9a-f]{16}\.tmp\Z")  # a writer's temp file left by a crash
# Files whose content is a secret: written 0600 whatever mode the bundle claims.
_SECRET_SUFFIXES = (".key", ".conf", "encryption-keys.yaml")
_ALLOWED_MODES = frozenset({KEY_MODE, CERT_MODE})


def ca_paths() -> list[tuple[str, str]]:
    """(CA name, path in DIR) of every CA the PKI keeps under DIR/local/pki."""
    return [(ca.name, f"{LOCAL}/pki/{ca.base}.crt") for ca in CAS]


# --------------------------------------------------------------------------- export


def export_dir(pki_dir: str | Path) -> dict[str, Any]:
    """Every regular file of a PKI directory (crash-left temp files aside), by relative
    path. A directory without the PKI's manifest or CA, or with a link in it, is refused."""
    path = str(pki_dir)
    if not os.path.isdir(path) or os.path.islink(path):
        raise ConfigError(f"{path}: not a directory; give the PKI directory (the one "
                          "`apply` or `pki` wrote, with local/manifest.json)")
    found: dict[str, dict[str, Any]] = {}
    try:
        with Tree.open(path) as tree:
            _walk(tree, "", found)
    except PKIError as err:
        raise ConfigError(f"{err}") from err
    for must in (MANIFEST_PATH, ca_paths()[0][1]):
        if must not in found:
            raise ConfigError(f"{path}: not a PKI directory (no {must}); give the directory "
                              "that `apply` or `pki` wrote")
    return {"format": FORMAT, "version": VERSION, "files": dict(sorted(found.items()))}


def _walk(tree: Tree, rel_dir: str, found: dict[str, dict[str, Any]]) -> None:
    fd = tree.dir_fd(rel_dir, create=False)
    assert fd is not None
    for name in sorted(tree.names(rel_dir)):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _walk(tree, rel, found)
        elif _TEMP.match(name):
            continue
        elif stat.S_ISREG(st.st_mode):
            content = tree.read(rel)
            assert content is not None
            # The PKI writes 0644 or 0600; anything else (a hand-made chmod) goes narrow.
            mode = CERT_MODE if stat.S_IMODE(st.st_mode) == CERT_MODE else KEY_MODE
            found[rel] = {"content": base64.b64encode(content).decode(), "mode": mode}
        else:
            raise files.refusal(tree.full(rel), st, "a regular file or a directory")


def write_file(bundle: dict[str, Any], path: str | Path, *, allow_in_tree: bool = False) -> None:
    """The bundle as a JSON file, 0600 from its creation (it holds the CA keys), written
    atomically; refused inside a git work tree unless `allow_in_tree` (see `refuse_in_tree`)."""
    if not allow_in_tree:
        refuse_in_tree(path)
    data = json.dumps(bundle, indent=1, sort_keys=True).encode() + b"\n"
    try:
        files.write(os.path.abspath(path), data, KEY_MODE, durable=True)
    except PKIError as err:
        raise ConfigError(str(err)) from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be written ({err.strerror}); give another "
                          "file name") from err


IN_TREE_FLAG = "--allow-in-tree"


def work_tree_of(path: str | Path) -> Path | None:
    """The git work tree (checkout) that `path` would land in, if any: the nearest
    directory above it, links resolved, that holds a `.git`."""
    here = Path(os.path.realpath(os.path.abspath(path))).parent
    for directory in (here, *here.parents):
        if os.path.lexists(directory / ".git"):
            return directory
    return None


def refuse_in_tree(path: str | Path) -> None:
    """A bundle holds every CA key: inside a checkout it is one `git add .` from being
    committed. Refused there, with one line; `--allow-in-tree` says it is meant."""
    top = work_tree_of(path)
    if top is not None:
        name = Path(path).name or "STACK.bundle"
        raise ConfigError(f"{path}: inside the git work tree {top}, where a bundle (every CA "
                          "key) can be committed by mistake; give a path outside the "
                          f"checkout, e.g. ~/mzk-pki/{name}, or pass {IN_TREE_FLAG} if it "
                          "is meant. Nothing was written")


# --------------------------------------------------------------------------- reading


def read_file(path: str | Path) -> dict[str, Any]:
    """A bundle file, checked (see `check`); one line naming the file when it is not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}); give the file that "
                          "`pki-bundle export` wrote") from err
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes: not a PKI bundle")
    return loads(raw, str(path))


def loads(text: str | bytes, source: str) -> dict[str, Any]:
    """A bundle from its JSON text (a file, the stack's state, `multizone:pkiBundle`)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{source}: not a PKI bundle (not JSON: {err}); give the file "
                          "that `pki-bundle export` wrote") from err
    check(data, source)
    return data  # type: ignore[no-any-return]


def check(bundle: Any, source: str) -> dict[str, tuple[bytes, int]]:
    """relative path -> (bytes, mode) of a well-formed bundle; else one ConfigError line."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise ConfigError(f"{source}: not a PKI bundle (format is not {FORMAT!r}); give "
                          "the file that `pki-bundle export` wrote")
    if bundle.get("version") != VERSION:
        raise ConfigError(f"{source}: PKI bundle version {bundle.get('version')!r}; this "
                          f"tool reads version {VERSION}: use the tool that wrote it")
    entries = bundle.get("files")
    if not isinstance(entries, dict):
        raise ConfigError(f"{source}: files: expected a mapping of path -> "
                          "{content, mode}")
    out: dict[str, tuple[bytes, int]] = {}
    for rel, entry in entries.items():
        where = f"{source}: files[{rel!r}]"
        parts = rel.split("/") if isinstance(rel, str) else []
        if not parts or not all(_COMPONENT.match(p) for p in parts):
            raise ConfigError(f"{where}: not a relative path of plain names; the bundle "
                              "was altered, export it again")
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or \
                isinstance(entry.get("mode"), bool) or \
                entry.get("mode") not in _ALLOWED_MODES:
            raise ConfigError(f"{where}: expected {{content: base64, mode: 0600 or 0644}}; "
                              "the bundle was altered, export it again")
        try:
            content = base64.b64decode(entry["content"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise ConfigError(f"{where}: content is not base64; export it again") from err
        mode = KEY_MODE if rel.endswith(_SECRET_SUFFIXES) or b"PRIVATE KEY" in content \
            else int(entry["mode"])
        out[rel] = (content, mode)
    for must in (MANIFEST_PATH, ca_paths()[0][1]):
        if must not in out:
            raise ConfigError(f"{source}: not a PKI bundle (no {must}); give the file that "
                              "`pki-bundle export` wrote")
    return out


# --------------------------------------------------------------------------- import


def import_dir(bundle: dict[str, Any], pki_dir: str | Path, source: str = "the bundle") -> int:
    """Put the bundle's files into `pki_dir` (new, empty, or a PKI directory with the same
    CAs); files the bundle does not name are kept. Returns the number of files changed.

    Everything is checked before the first write: the bundle's form (`check`), its keys
    against their certificates (`bundle_verify`), the directory's CAs against the bundle's,
    and no key of the directory that the bundle would replace with another (`_refuse_lost`).
    Then all or nothing: the result is written into a new directory beside `pki_dir` and
    swapped in whole (`dir_swap`), so a failure leaves `pki_dir` exactly as it was."""
    entries = check(bundle, source)
    bundle_verify.verify(entries, source)
    path = str(Path(pki_dir))
    existing: dict[str, tuple[bytes, int]] = {}
    if os.path.lexists(path):
        existing = _existing(path, entries, source)
    changed = [rel for rel, value in entries.items() if existing.get(rel) != value]
    if not changed:
        return 0
    _refuse_lost(path, existing, entries, source)
    merged = {**existing, **entries}

    def fill(temp: str) -> None:
        root = open_out(temp)
        with root:
            root.claim(PRIVATE_DIR_MODE)
            for rel, (content, mode) in sorted(merged.items()):
                root.write(rel, content, mode, durable=mode == KEY_MODE)

    try:
        dir_swap.replace_dir(path, fill)
    except PKIError as err:
        raise ConfigError(f"{err}. Nothing was changed") from err
    except OSError as err:
        raise ConfigError(f"{path}: the import could not be written ({err.strerror}); "
                          "nothing was changed, fix that and import again") from err
    return len(changed)


def _existing(path: str, entries: dict[str, tuple[bytes, int]],
              source: str) -> dict[str, tuple[bytes, int]]:
    """The files of an existing `pki_dir` (none if it is empty), after refusing one that is
    not a PKI directory or holds another cluster's CAs."""
    _refuse_foreign(path, entries, source)
    try:
        with Tree.open(path) as tree:
            if not tree.names(""):
                return {}
            found: dict[str, dict[str, Any]] = {}
            _walk(tree, "", found)
    except PKIError as err:
        raise ConfigError(f"{err}. Nothing was written") from err
    return {rel: (base64.b64decode(e["content"]), e["mode"]) for rel, e in found.items()}


# Keys a directory holds that no bundle may silently replace with another: every
# service-account token, Secret or tunnel depends on them (CA keys are held to their
# certificates, which must already be the same).
_KEPT_KEYS = re.compile(r"local/pki/sa\.(key|pub)\Z|local/egress-tunnel/[^/]+\.key\Z")
ENCRYPTION_KEYS = f"{LOCAL}/encryption-keys.yaml"


def _refuse_lost(path: str, existing: dict[str, tuple[bytes, int]],
                 entries: dict[str, tuple[bytes, int]], source: str) -> None:
    for rel, (ours, _mode) in sorted(existing.items()):
        theirs = entries.get(rel, (None, 0))[0]
        if theirs is None or theirs == ours:
            continue
        lost = None
        if _KEPT_KEYS.match(rel):
            lost = "a different key"
        elif rel == ENCRYPTION_KEYS and not _secrets(ours) <= _secrets(theirs):
            lost = "encryption keys without one of the directory's (its Secrets would be " \
                   "unreadable)"
        if lost:
            raise ConfigError(f"{path}/{rel}: {source} holds {lost}; importing would lose "
                              "this directory's key. Import into a new directory (or move "
                              "this one aside) if the bundle is the one to keep. Nothing was "
                              "written")


def _secrets(text: bytes) -> set[bytes]:
    """The `secret:` values of an encryption key file (whatever else it holds)."""
    return set(re.findall(rb"secret:\s*['\"]?([A-Za-z0-9+/=]+)", text))


def _refuse_foreign(path: str, entries: dict[str, tuple[bytes, int]], source: str) -> None:
    try:
        tree = Tree.open(path)
    except PKIError as err:
        raise ConfigError(str(err)) from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be opened ({err.strerror}); give a directory "
                          "you can write to") from err
    with tree:
        try:
            if not tree.names(""):
                return
            if tree.read(MANIFEST_PATH) is None:
                raise ConfigError(f"{path}: not empty and not a PKI directory (no "
                                  f"{MANIFEST_PATH}); give a new or empty directory. "
                                  "Nothing was written")
            for name, rel in ca_paths():
                ours, theirs = tree.read(rel), entries.get(rel, (None, 0))[0]
                if ours is None or theirs is None or _same_key(ours, theirs):
                    continue
                raise ConfigError(
                    f"{path} holds {name} {_print(ours)}, but {source} holds "
                    f"{_print(theirs)}: they are different clusters' PKIs; import into a "
                    "new directory (or move this one aside). Nothing was written")
        except PKIError as err:
            raise ConfigError(str(err)) from err


def _same_key(a: bytes, b: bytes) -> bool:
    """Whether two CA certificates carry one key (a CA re-signed with its key is the same
    CA to every host that trusts it)."""
    try:
        keys = [x509.load_pem_x509_certificate(pem).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            for pem in (a, b)]
    except ValueError:
        return a == b
    return keys[0] == keys[1]


def _print(pem: bytes) -> str:
    try:
        return fingerprint(pem)
    except ValueError:
        return "an unreadable certificate"


def ca_fingerprint(bundle: dict[str, Any]) -> str:
    """The cluster CA's fingerprint: what names a bundle in messages."""
    content, _ = check(bundle, "the bundle")[ca_paths()[0][1]]
    return _print(content)


def same_cluster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two bundles hold the same CAs (by key), CA by CA where both have one."""
    fa, fb = check(a, "the bundle"), check(b, "the bundle")
    for _name, rel in ca_paths():
        if rel in fa and rel in fb and not _same_key(fa[rel][0], fb[rel][0]):
            return False
    return True


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """`pki-bundle export DIR FILE` | `pki-bundle import FILE DIR`."""
    sub = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    export = sub.add_parser("export", help="write a PKI directory into a bundle file (0600)")
    export.add_argument("pki_dir", metavar="DIR", help="the PKI directory")
    export.add_argument("file", metavar="FILE", help="the bundle file to write (outside any "
                                                     "git work tree, e.g. ~/mzk-pki/x.bundle)")
    export.add_argument(IN_TREE_FLAG, action="store_true",
                        help="write FILE even inside a git work tree (it holds the CA keys)")
    into = sub.add_parser("import", help="write a bundle's files into a PKI directory (new, "
                                         "empty, or one with the same CAs)")
    into.add_argument("file", metavar="FILE", help="a bundle file (`export`, or "
                                                   "`bin/mzk pki export STACK`)")
    into.add_argument("pki_dir", metavar="DIR", help="the PKI directory to write")


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        bundle = export_dir(args.pki_dir)
        write_file(bundle, args.file, allow_in_tree=args.allow_in_tree)
        print(f"pki-bundle: {len(bundle['files'])} files of {args.pki_dir} (kubernetes-ca "
              f"{ca_fingerprint(bundle)}) -> {args.file} (0600: it holds the CA keys)")
        return 0
    bundle = read_file(args.file)
    changed = import_dir(bundle, args.pki_dir, source=args.file)
    print(f"pki-bundle: {args.file} (kubernetes-ca {ca_fingerprint(bundle)}) -> "
          f"{args.pki_dir}: {changed} of {len(bundle['files'])} files written")
    return 0
