"""The lab's stand-ins for the EBS volumes that hold etcd on AWS: one sparse file and loop
device per control-plane host (`DIR/hosts/<name>/etcd-volume.img`), named in the inventory
as the host's `etcd_volume`, so the bootstrap's etcd-volume step formats and mounts a real
block device here as it does on EC2. Where this machine lends no loop device, the lab
goes without (etcd then keeps its data in the host's directory) and says so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bootstrap.lab.layout import Layout

SIZE = "1G"  # sparse: costs only what etcd writes
IMAGE = "etcd-volume.img"


def _attached(image: Path) -> str | None:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                         check=False).stdout
    return out.split(":", 1)[0].strip() or None


def ensure(layout: Layout, say) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """host name -> loop device, attaching (and creating) what is missing."""
    devices = {}
    for host in layout.hosts:
        if "etcd" not in host.roles:
            continue
        image = host.home(layout.dir) / IMAGE
        image.parent.mkdir(parents=True, exist_ok=True)
        if not image.exists():
            subprocess.run(["truncate", "-s", SIZE, str(image)], check=True)
        device = _attached(image)
        if device is None:
            proc = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                say(f"lab: no loop device for {host.name} ({proc.stderr.strip()}); etcd "
                    "keeps its data in the host's directory")
                continue
            device = proc.stdout.strip()
        devices[host.name] = device
    return devices


def release(lab_dir: Path) -> None:
    """Detach every loop device backed by one of this lab's images (after its hosts'
    processes, and with them their mounts, are gone)."""
    for image in (lab_dir / "hosts").glob(f"*/{IMAGE}"):
        while (device := _attached(image)) is not None:
            if subprocess.run(["losetup", "-d", device], check=False,
                              capture_output=True).returncode != 0:
                break
