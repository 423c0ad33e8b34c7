"""Each control-plane host's SSH tunnel key, kept beside the PKI on the operator's machine.

`DIR/local/egress-tunnel/<host>.key` (0600 in a 0700 directory; DIR is the PKI directory):
an Ed25519 key per control-plane host, made on the first apply in `ssh-tunnel` mode. Made
locally, like every other key of the cluster, so `plan` knows the public half that nodes
will authorize before any host is touched, and the PKI directory stays the one thing to
back up (or keep in the stack's secrets). A key whose host left the control plane, or all
of them when the cluster leaves `ssh-tunnel` mode, is deleted: nothing of an old mode stays.
Each key made is listed in `local/keys-made.json` (`bootstrap.pki.key_ledger`): a listed key
that is missing was lost, and is refused rather than silently made again (nodes authorize the
old public half); only one removed on purpose (above) leaves the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bootstrap.errors import PKIError
from bootstrap.inventory import Inventory
from bootstrap.pki import key_ledger
from bootstrap.pki.files import PRIVATE_DIR_NAMES, Tree, is_temp_of
from bootstrap.pki.issue import KEY_MODE, LOCAL

DIR = f"{LOCAL}/egress-tunnel"
_PRIVATE = PRIVATE_DIR_NAMES | {LOCAL, "egress-tunnel"}  # as `generate` opens the PKI


@dataclass(frozen=True)
class TunnelKey:
    private_pem: bytes  # OpenSSH format, unencrypted: the service reads it unattended
    public_line: str  # "ssh-ed25519 AAAA..."


@dataclass(frozen=True)
class TunnelKeys:
    keys: dict[str, TunnelKey]  # control-plane host -> key
    written: tuple[str, ...]  # paths relative to the PKI directory, for the report
    removed: tuple[str, ...]


def _new() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption())


def _public(private_pem: bytes, where: str) -> str:
    try:
        key = serialization.load_ssh_private_key(private_pem, password=None)
    except (ValueError, TypeError) as err:
        raise PKIError(f"{where}: not an unencrypted OpenSSH private key ({err}); remove it "
                       "to have a new tunnel key made (nodes then authorize the new one)") \
            from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PKIError(f"{where}: not an Ed25519 key; remove it to have a new one made")
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def ensure(pki_dir: Path, inventory: Inventory) -> TunnelKeys:
    """The keys the inventory's mode needs, made where missing; others removed."""
    wanted = ({h.name for h in inventory.control_plane}
              if inventory.cluster.egress == "ssh-tunnel" else set())
    keys: dict[str, TunnelKey] = {}
    written: list[str] = []
    removed: list[str] = []
    with Tree.open(str(pki_dir), private=_PRIVATE) as tree:
        tree.fix_modes = True  # below the PKI directory (generate made it ours already)
        for name in sorted(wanted):
            rel = f"{DIR}/{name}.key"
            pem = tree.read(rel)
            if pem is None:
                key_ledger.refuse_lost(tree, rel, f"the egress tunnel key of {name}",
                                       "nodes authorize its public half")
                pem = _new()
                tree.write(rel, pem, KEY_MODE, durable=True)
                written.append(rel)
            keys[name] = TunnelKey(pem, _public(pem, tree.full(rel)))
        key_ledger.update(tree, add=[f"{DIR}/{n}.key" for n in wanted])
        owned = {f"{n}.key" for n in wanted}
        for file in tree.names(DIR):
            if file.endswith(".key") and file not in owned or is_temp_of(file, owned):
                if tree.unlink(f"{DIR}/{file}"):
                    removed.append(f"{DIR}/{file}")
        # Keys of hosts no longer wanted leave the list, whether removed now or lost.
        key_ledger.update(tree, remove=[k for k in key_ledger.listed(tree)
                                        if k.startswith(f"{DIR}/") and
                                        k.removeprefix(f"{DIR}/").removesuffix(".key")
                                        not in wanted])
        if not wanted:
            tree.rmdir_if_empty(DIR)
    return TunnelKeys(keys, tuple(written), tuple(removed))
