"""Nodes: containerd, the pod network template and the kubelet on every inventory node
(NODES), then the conformance gate (NODES_ADMIT): a node keeps its `CHECKS_TAINT` until its
node checks pass, its kubelet is Ready and it registered under its name and address.

Decided from the facts like every step: a converged node costs no round trip. The order on a
node: files, the kernel values, containerd, the sandbox image (lab: imported from our own
archive, again whenever the runtime lost it; real hosts pull it pinned by digest), then the
kubelet, which restarts only when its unit (binary, command line, files it names) changed.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bootstrap.addons.lab_images import LabImage
from bootstrap.control_plane.config import ADMIN_CONF
from bootstrap.engine import HostContext, Step
from bootstrap.errors import StepError
from bootstrap.hostfiles import FileSpec, put_many
from bootstrap.inventory import Host, Inventory
from bootstrap.node import checks, cni, containerd_config, pause_image
from bootstrap.node import kubelet_config as kc
from bootstrap.runner import Runner
from bootstrap.services import (
    Service,
    ServiceStatus,
    change_from_facts,
    inputs_digest,
    manager_from,
    unit_path,
)
from bootstrap.steps.cluster_objects import kubectl_path

CONTENT_DIR = "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"
SERVICES = ("containerd", "kubelet")
PACKAGES = ("containerd", "runc", "containernetworking-plugins")
READY_LIMIT = 120.0  # seconds for a (re)started kubelet to be Ready and pass its checks


def _nodes(inventory: Inventory) -> tuple[Host, ...]:
    return inventory.nodes


def _lab_pause_digest() -> str:
    return pause_image.image_digest().removeprefix("sha256:")


def facts_script(lab_images: dict[str, LabImage] | None = None) -> str:
    """The node's readings for its checks, and whether the runtime holds our pause image
    and the lab's add-on images."""
    held = [f'[ -f {CONTENT_DIR}/{image.blob} ] && echo "nc.image.{name} 1" '
            f'|| echo "nc.image.{name} 0"' for name, image in (lab_images or {}).items()]
    return "\n".join([checks.SCRIPT,
                      f'[ -f {CONTENT_DIR}/{_lab_pause_digest()} ] && echo "nc.pause 1" '
                      '|| echo "nc.pause 0"', *held])


def watched_paths(ctx: HostContext) -> list[str]:
    if not ctx.host.has("node"):
        return []
    return [containerd_config.CONFIG_PATH, cni.TEMPLATE_PATH, kc.CONFIG_PATH, kc.SYSCTL_FILE,
            pause_image.ARCHIVE_PATH, *(unit_path(s) for s in SERVICES)]


def _files(ctx: HostContext) -> list[FileSpec]:
    lab = bool(ctx.facts.get("lab"))
    c = ctx.inventory.cluster
    template = c.cni == "bridge"
    containerd = containerd_config.for_node(lab, pod_network=template)
    settings = kc.KubeletSettings(lab=lab, cluster_dns=c.dns_address,
                                  cluster_domain=c.dns_domain,
                                  cgroup_root=ctx.facts.get("node_readings", {}).get(
                                      "cgroup_root") if lab else None)
    files = [FileSpec(containerd_config.CONFIG_PATH, containerd.encode(), 0o644),
             FileSpec(kc.CONFIG_PATH, kc.config_yaml(settings), 0o644),
             FileSpec(kc.SYSCTL_FILE, kc.sysctl_conf(), 0o644)]
    if template:
        files.append(FileSpec(cni.TEMPLATE_PATH, cni.template(), 0o644))
    if lab:
        files.append(FileSpec(pause_image.ARCHIVE_PATH, pause_image.oci_image(), 0o644))
    return files


def _services(ctx: HostContext, files: list[FileSpec]) -> tuple[Service, Service]:
    """The node's two services, each unit naming the digest of what it reads."""
    contents = {f.path: f.content for f in files}
    containerd = containerd_config.service(ctx.facts["bin"].get("containerd")
                                           or containerd_config.DEFAULT_BINARY)
    containerd = dataclasses.replace(containerd, env={"MZK_INPUTS": inputs_digest(
        "containerd", containerd.command_line, contents)})
    kubelet = kc.service(kc.command(ctx.facts["k8s"]["kubelet"], ctx.name, ctx.host.address,
                                    ctx.host.zone))
    contents.update({f.path: f.content for f in ctx.shared["pki"].hosts[ctx.name].files})
    kubelet = dataclasses.replace(kubelet, env={"MZK_INPUTS": inputs_digest(
        ctx.facts["k8s_id"]["kubelet"], kubelet.command_line, contents)})
    return containerd, kubelet


def converge(ctx: HostContext) -> None:
    readings = checks.Readings(ctx.facts.get("node_readings", {}))
    lab = bool(ctx.facts.get("lab"))
    bins = ctx.facts.get("bin", {})
    missing = [p for p, tool in zip(PACKAGES, ("containerd", "runc", None), strict=True)
               if tool and not bins.get(tool)]
    if missing and lab:
        raise StepError(f"{ctx.name}: lab host without {', '.join(missing)}: apt-get install "
                        f"{' '.join(PACKAGES)} on this machine")
    if missing:
        ctx.note(f"install {' '.join(PACKAGES)} (distribution packages)")
        if not ctx.dry_run:
            ctx.runner.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                           + " ".join(PACKAGES), timeout=600)
        bins = {**bins, "containerd": "/usr/bin/containerd", "ctr": "/usr/bin/ctr"}
        ctx.facts["bin"] = bins
    states = ctx.facts.get("file_states") or {}
    files = _files(ctx)
    todo = [f for f in files if states.get(f.path, "?") != f.state()]
    for f in todo:
        ctx.note(f"write {f.path}")
    kernel = [k for k, want in kc.KERNEL_DEFAULTS.items()
              if readings.values.get("sysctl." + k) != want]
    if kernel:
        ctx.note(f"set kernel values {', '.join(k.replace('/', '.') for k in kernel)} "
                 f"({kc.SYSCTL_FILE})")
    containerd, kubelet = _services(ctx, files)
    status: dict[str, ServiceStatus] = ctx.facts.get("services", {})
    changes = {s.name: change_from_facts(s, states.get(unit_path(s.name)), status.get(s.name))
               for s in (containerd, kubelet)}
    import_pause = lab and (readings.values.get("pause") != "1" or bool(changes["containerd"]))
    lab_images: dict[str, LabImage] = (ctx.shared.get("lab_images") or {}) if lab else {}
    imports = [i for name, i in lab_images.items()
               if readings.values.get(f"image.{name}") != "1"]
    for line in (changes["containerd"],
                 "import the sandbox image into containerd" if import_pause else None,
                 *(f"import the lab's {i.name} image into containerd" for i in imports),
                 changes["kubelet"]):
        if line:
            ctx.note(line)
    # Anything changed on the node: its checks are read again before it is judged.
    ctx.facts["node_started"] = bool(changes["kubelet"] or changes["containerd"] or kernel
                                     or import_pause)
    if ctx.dry_run:
        return
    if todo:
        put_many(ctx.runner, todo)
    if kernel:
        ctx.runner.run(f"sysctl -q -p {kc.SYSCTL_FILE}")
    manager = manager_from(ctx.name, lab, bool(ctx.facts.get("systemd")))
    if changes["containerd"]:
        manager.ensure(ctx.runner, containerd)
    archives = ([pause_image.ARCHIVE_PATH] if import_pause else []) + [i.archive
                                                                       for i in imports]
    if archives:
        sock = shlex.quote(kc.RUNTIME_SOCKET)
        ctr = f"ctr --address {sock} -n k8s.io images import"
        ctx.runner.run(f"for i in $(seq 100); do [ -S {sock} ] && break; sleep 0.1; done; "
                       + " && ".join(f"{ctr} {shlex.quote(a)} >/dev/null" for a in archives),
                       timeout=120)
    if changes["kubelet"]:
        manager.ensure(ctx.runner, kubelet)


# --------------------------------------------------------------------------- admission


def registered(runner: Runner, kubectl: str) -> dict[str, dict[str, Any]] | None:
    """Node name -> Node object, as the API server has them (None: no answer)."""
    out = runner.run(f"{shlex.quote(kubectl)} --kubeconfig={ADMIN_CONF} "
                     "--request-timeout=5s get nodes -o json", check=False)
    if not out.ok:
        return None
    try:
        return {n["metadata"]["name"]: n for n in json.loads(out.stdout)["items"]}
    except (ValueError, KeyError, TypeError):
        return None


def _node_objects(cp: HostContext) -> dict[str, dict[str, Any]] | None:
    return registered(cp.runner, kubectl_path(cp))


def check_phrase(failures: list[str], node: dict[str, Any] | None, host: Host) -> str:
    """`check`'s words for a node: passed, or each thing that failed (then PROBLEM)."""
    found = failures + registration_problems(node, host)
    if not found:
        return "node checks passed" + (" (still tainted: run apply)" if _tainted(node) else "")
    return "node checks FAILED: " + "; ".join(found) + ", PROBLEM"


def registration_problems(node: dict[str, Any] | None, host: Host) -> list[str]:
    """What the API server's view of the node says against the inventory."""
    if node is None:
        return ["not registered with the API server"]
    problems = []
    status = node.get("status", {})
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    if ready.get("status") != "True":
        problems.append(f"not Ready ({ready.get('reason', 'no status yet')})")
    internal = [a["address"] for a in status.get("addresses", [])
                if a.get("type") == "InternalIP"]
    if host.address not in internal:
        problems.append(f"registered with InternalIP {', '.join(internal) or 'none'}, "
                        f"not {host.address}")
    zone = node.get("metadata", {}).get("labels", {}).get(kc.ZONE_LABEL)
    if zone != host.zone:
        problems.append(f"zone label {zone!r}, not {host.zone!r}")
    return problems


def joined_phrase(node: dict[str, Any]) -> str:
    """`check`'s words for a node that joined by itself (in no inventory)."""
    labels = node.get("metadata", {}).get("labels") or {}
    ready: dict[str, Any] = next((c for c in node.get("status", {}).get("conditions", [])
                                  if c.get("type") == "Ready"), {})
    state = "Ready" if ready.get("status") == "True" else f"NOT Ready ({ready.get('reason')})"
    admitted = ("waiting for node checks (the approver lifts its taint)" if _tainted(node)
                else "admitted")
    return f"{labels.get(kc.ZONE_LABEL, '?')}, joined by TLS bootstrapping, {state}, {admitted}"


def _tainted(node: dict[str, Any] | None) -> bool:
    return any(t.get("key") == kc.CHECKS_TAINT
               for t in (node or {}).get("spec", {}).get("taints") or [])


def _read_checks(ctx: HostContext) -> list[str]:
    before = time.time()
    text = ctx.runner.run("sh -s", stdin=checks.SCRIPT.encode()).stdout
    return checks.evaluate(checks.Readings.parse(text), ctx.host.address,
                           bool(ctx.facts.get("lab")), before, time.time())


def _objects(control: list[HostContext], fresh: bool) -> dict[str, dict[str, Any]]:
    """The Node objects: from the first control-plane host's facts unless `fresh`; a plan
    before any API server answers sees none."""
    if not fresh:
        known = (control[0].facts.get("objects") or {}).get("nodes")
        if known is not None:
            return known  # type: ignore[no-any-return]
        if control[0].dry_run:
            return {}
    found = next((o for o in map(_node_objects, control) if o is not None), None)
    if found is None:
        raise StepError("no API server answered kubectl; check `python -m bootstrap check`")
    return found


def admit(group: list[HostContext]) -> None:
    """Lift the taint of nodes that pass, put it back on nodes that fail; first wait
    (bounded) for nodes whose kubelet or runtime (re)started in this run."""
    nodes = [c for c in group if c.host.has("node")]
    control = [c for c in group if c.host.has("control-plane")]
    if not nodes or not control:
        return
    dry = group[0].dry_run
    started = [c for c in nodes if c.facts.get("node_started")]
    failed = {c.name: list(c.facts.get("node_failures", [])) for c in nodes}
    objects = _objects(control, fresh=bool(started) and not dry)
    deadline = time.monotonic() + READY_LIMIT
    while started and not dry:
        waiting = [c for c in started if failed[c.name]
                   or registration_problems(objects.get(c.name), c.host)]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(1.0)
        with ThreadPoolExecutor(max_workers=16) as pool:
            for ctx, found in zip(waiting, pool.map(_read_checks, waiting), strict=True):
                failed[ctx.name] = found
        objects = _objects(control, fresh=True)
    lift, put, problems = [], [], {}
    for ctx in nodes:
        node = objects.get(ctx.name)
        if dry and ctx in started:  # it will pass, or apply fails on it
            if node is None or _tainted(node):
                lift.append(ctx)
            continue
        found = failed[ctx.name] + registration_problems(node, ctx.host)
        ctx.facts["node_check_result"] = found
        if found:
            problems[ctx.name] = found
            if node is not None and not _tainted(node):
                put.append(ctx)
        elif _tainted(node):
            lift.append(ctx)
    for ctx in lift:
        ctx.note("lift the conformance taint: node checks pass")
    for ctx in put:
        ctx.note(f"taint: node checks fail ({'; '.join(problems[ctx.name])})")
    commands = [f"taint nodes {c.name} {kc.CHECKS_TAINT}:NoSchedule-" for c in lift] + [
        f"taint nodes {c.name} {kc.CHECKS_TAINT}=:NoSchedule --overwrite" for c in put]
    if commands and not dry:
        kubectl = f"{shlex.quote(kubectl_path(control[0]))} --kubeconfig={ADMIN_CONF}"
        control[0].runner.run(" && ".join(f"{kubectl} {c} >/dev/null" for c in commands))
    started_bad = [c for c in started if c.name in problems]
    if started_bad and not dry:
        raise StepError("; ".join(f"{c.name}: {', '.join(problems[c.name])}"
                                  for c in started_bad))


def _nodes_and_control_plane(inventory: Inventory) -> tuple[Host, ...]:
    return (*inventory.control_plane, *(h for h in inventory.nodes
                                        if not h.has("control-plane")))


NODES = Step("nodes", _nodes, run=converge)
NODES_ADMIT = Step("nodes-admit", _nodes_and_control_plane, run_together=admit)
