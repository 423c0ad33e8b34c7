"""User data (cloud-init) for hosts: operator's key, pinned host key, zone facts.

Rendering is pure (plain strings in, YAML out) so that it is tested without Pulumi; the
components call it inside `apply` and wrap results that hold a private key as secrets.
"""

from __future__ import annotations

import yaml


def host_user_data(hostname: str, zone: str, user: str, operator_key: str,
                   host_private_key: str | None = None, host_public_key: str | None = None,
                   files: dict[str, str] | None = None) -> str:
    """A cloud-config that installs the program's host key (no key generated on the host)."""
    config: dict[str, object] = {
        "hostname": hostname,
        "preserve_hostname": False,
        "users": [{"name": user, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                   "ssh_authorized_keys": [operator_key]}],
        "ssh_pwauth": False,
        "disable_root": True,
        "write_files": [
            {"path": path, "permissions": "0644", "content": content}
            for path, content in {"/etc/multizone/zone": f"{zone}\n", **(files or {})}.items()
        ],
    }
    if host_private_key and host_public_key:
        # Replace the image's keys with ours and generate none: the inventory pins ours.
        config["ssh_deletekeys"] = True
        config["ssh_genkeytypes"] = []
        config["ssh_keys"] = {"ed25519_private": host_private_key,
                              "ed25519_public": host_public_key}
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)
