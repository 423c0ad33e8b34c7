"""The pause program, its OCI image and containerd's config, down to a real containerd.

The program is run for real (it is a few hundred bytes of our own machine code); the
pid-namespace test and the containerd test need root and are skipped, with the reason,
without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bootstrap.errors import ConfigError
from bootstrap.node import containerd_config, pause_image
from bootstrap.node.pause_image import DEFAULT_TAG, image_digest, oci_image, pause_binary

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0,
             detail: Callable[[], object] | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    found = f": {detail()}" if detail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{found}")


def processes() -> dict[int, tuple[str, int, str]]:
    """pid -> (state, ppid, comm) of every process now."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        found[int(entry)] = (state, int(ppid), comm)
    return found


def innermost_pid(status: str) -> str:
    """The last NSpid of a /proc/PID/status text: the pid in its own pid namespace."""
    return status.split("NSpid:")[1].splitlines()[0].split()[-1]


def children(pid: int) -> dict[int, tuple[str, int, str]]:
    return {p: info for p, info in processes().items() if info[1] == pid}


@pytest.fixture(scope="module")
def pause_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pause") / "pause"
    path.write_bytes(pause_binary())
    path.chmod(0o755)
    return path


@pytest.fixture
def started(pause_file: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts commands; kills (by PID) whatever is still running at the end."""
    running: list[subprocess.Popen[bytes]] = []

    def default_signals() -> None:  # as a runtime starts a sandbox (not as nohup left us)
        for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)

    def start(*argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=default_signals)
        running.append(process)
        return process

    yield start
    for process in running:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# --- the program -------------------------------------------------------------------------

def test_the_pause_binary_is_a_small_static_x86_64_executable() -> None:
    binary = pause_binary()
    assert len(binary) < 16 * 1024
    assert binary == pause_binary()
    assert binary[:4] == b"\x7fELF" and binary[4:6] == b"\x02\x01"  # 64-bit little-endian
    e_type, e_machine, _, entry, phoff = struct.unpack_from("<HHIQQ", binary, 16)
    phentsize, phnum = struct.unpack_from("<HH", binary, 54)
    assert (e_type, e_machine) == (2, 0x3E)  # ET_EXEC, x86-64
    headers = [struct.unpack_from("<IIQQQQQQ", binary, phoff + i * phentsize)
               for i in range(phnum)]
    assert {h[0] for h in headers} == {1, 0x6474E551}  # PT_LOAD + PT_GNU_STACK: no interpreter
    (load,) = [h for h in headers if h[0] == 1]
    _, flags, offset, vaddr, _, filesz, memsz, _ = load
    assert (offset, filesz, memsz) == (0, len(binary), len(binary))
    assert flags == 5  # read + execute, not writable
    assert vaddr < entry < vaddr + filesz
    (stack,) = [h for h in headers if h[0] == 0x6474E551]
    assert stack[1] & 1 == 0  # the stack is not executable


def _objdump_lines(binary: bytes, start: int, tmp_path: Path) -> list[tuple[int, str]]:
    path = tmp_path / "pause.bin"
    path.write_bytes(binary)
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel",
         f"--adjust-vma={pause_image.LOAD_ADDRESS:#x}", f"--start-address={start:#x}",
         str(path)], check=True, capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        match = re.match(r"^\s*([0-9a-f]+):\t[0-9a-f ]+\t(.+)$", line)
        if match:
            text = re.sub(r"\s+", " ", match.group(2)).strip()
            # `lea rax,[rip+0xd8] # 0x400193` -> `lea rax,[rip+0x400193]`
            text = re.sub(r"\[rip\+0x[0-9a-f]+\] # (0x[0-9a-f]+)", r"[rip+\1]", text)
            lines.append((int(match.group(1), 16), text))
    return lines


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_the_machine_code_is_what_its_listing_says(tmp_path: Path) -> None:
    """A disassembler reads back, instruction by instruction, the text beside each encoding
    in pause_image.program(), jump and lea targets included."""
    binary = pause_binary()
    entry = struct.unpack_from("<Q", binary, 24)[0]
    _, labels = pause_image.assemble(pause_image.program(), entry)
    expected = []
    address = entry
    for item in pause_image.program():
        if isinstance(item, pause_image.Instruction):
            text = item.text.split(";")[0].strip()
            if item.target:
                text = text.replace(item.target, f"{labels[item.target]:#x}")
            expected.append((address, text))
            address += item.size
    assert _objdump_lines(binary, entry, tmp_path) == expected


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pause_blocks_until_told_to_stop_then_exits_0(
        pause_file: Path, started: Callable[..., subprocess.Popen[bytes]],
        sig: signal.Signals) -> None:
    process = started(str(pause_file))
    wait_for(lambda: os.readlink(f"/proc/{process.pid}/exe") == str(pause_file), "exec")
    time.sleep(0.2)
    # The handlers are installed: SigCgt holds exactly SIGINT, SIGTERM and SIGCHLD.
    status = Path(f"/proc/{process.pid}/status").read_text()
    caught = re.findall(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
    assert caught == [f"{(1 << 1) | (1 << 14) | (1 << 16):016x}"]
    assert process.poll() is None, "pause returned by itself"
    process.send_signal(sig)
    assert process.wait(timeout=5) == 0


def test_a_signal_without_a_handler_still_kills_it(
        pause_file: Path, started: Callable[..., subprocess.Popen[bytes]]) -> None:
    """The control for the test above: exit status 0 comes from our handler."""
    process = started(str(pause_file))
    wait_for(lambda: os.readlink(f"/proc/{process.pid}/exe") == str(pause_file), "exec")
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=5) == -signal.SIGHUP


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                    reason="unshare and nsenter (util-linux) are needed")
def test_as_pid_1_it_reaps_orphans_and_stops_on_sigterm(
        pause_file: Path, started: Callable[..., subprocess.Popen[bytes]]) -> None:
    unshare = started("unshare", "--fork", "--pid", "--mount-proc", str(pause_file))

    def pause_pid() -> int | None:
        for pid in children(unshare.pid):
            try:
                if os.readlink(f"/proc/{pid}/exe") == str(pause_file):
                    return pid
            except OSError:
                pass
        return None

    pid1 = wait_for(pause_pid, "pause as pid 1 of a new pid namespace")
    assert isinstance(pid1, int)
    try:
        assert innermost_pid(Path(f"/proc/{pid1}/status").read_text()) == "1"
        # A shell inside the namespace starts `sleep` in the background and exits: the
        # orphan is re-parented to the namespace's pid 1, our pause; when it exits, pause
        # must reap it, or it stays a zombie (state Z) under pause.
        subprocess.run(["nsenter", "-t", str(pid1), "-p", "--", "sh", "-c", "sleep 0.5 &"],
                       check=True, timeout=10)
        orphans = children(pid1)
        assert [comm for _, _, comm in orphans.values()] == ["sleep"], orphans
        wait_for(lambda: not children(pid1), "the orphan to exit and be reaped",
                 detail=lambda: children(pid1))
        os.kill(pid1, signal.SIGTERM)  # pid 1 gets only signals it has a handler for
        assert unshare.wait(timeout=5) == 0
    finally:
        # Killing unshare alone would leave pause running: end pid 1 itself (this ends
        # everything in its namespace).
        try:
            os.kill(pid1, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the image ---------------------------------------------------------------------------

def _members(archive: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar.getmembers():
            handle = tar.extractfile(info) if info.isfile() else None
            out[info.name] = (info, handle.read() if handle else None)
    return out


def test_the_archive_is_an_oci_layout_whose_digests_match_their_content() -> None:
    binary = pause_binary()
    members = _members(oci_image(DEFAULT_TAG, binary))
    assert list(members) == sorted(members)
    for info, _ in members.values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    blobs = {name.removeprefix("blobs/sha256/"): content
             for name, (_, content) in members.items()
             if name.startswith("blobs/sha256/")}
    assert set(members) == {"blobs", "blobs/sha256", "index.json", "oci-layout",
                            *(f"blobs/sha256/{h}" for h in blobs)}
    assert len(blobs) == 3
    for name, content in blobs.items():
        assert content is not None and hashlib.sha256(content).hexdigest() == name

    def blob(descriptor: dict[str, object]) -> bytes:
        digest = str(descriptor["digest"])
        content = blobs[digest.removeprefix("sha256:")]
        assert content is not None and descriptor["size"] == len(content)
        return content

    assert json.loads(members["oci-layout"][1] or b"") == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"][1] or b"")
    assert index["schemaVersion"] == 2
    (top,) = index["manifests"]
    assert top["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert top["annotations"] == {"org.opencontainers.image.ref.name": DEFAULT_TAG}
    assert top["digest"] == image_digest(binary) == image_digest()
    manifest = json.loads(blob(top))
    assert manifest["mediaType"] == top["mediaType"]
    config = json.loads(blob(manifest["config"]))
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"
    (layer_descriptor,) = manifest["layers"]
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    layer = blob(layer_descriptor)
    assert config["rootfs"] == {"type": "layers",
                                "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
    ((info, content),) = _members(layer).values()
    assert info.name == "pause" and info.isreg() and info.mode == 0o755
    assert (info.uid, info.gid, info.mtime) == (0, 0, 0)
    assert content == binary


def test_the_archive_is_reproducible_and_the_tag_only_names_it() -> None:
    assert oci_image(DEFAULT_TAG, pause_binary()) == oci_image()
    other = oci_image("example.org/sandbox:1", pause_binary())
    assert other != oci_image()
    index = json.loads(_members(other)["index.json"][1] or b"")
    assert index["manifests"][0]["digest"] == image_digest()
    # A different program is a different image.
    assert image_digest(pause_binary() + b"\0") != image_digest()


# --- containerd's config -----------------------------------------------------------------

CRI = "io.containerd.grpc.v1.cri"


@pytest.mark.parametrize(("kind", "systemd", "restrict"), [("real", True, False),
                                                          ("lab", False, True)])
def test_the_config_is_toml_with_the_settings_of_its_host_kind(
        kind: containerd_config.HostKind, systemd: bool, restrict: bool) -> None:
    config = tomllib.loads(containerd_config.render(kind))
    assert config["version"] == 2
    assert (config["root"], config["state"]) == ("/var/lib/containerd", "/run/containerd")
    assert config["grpc"]["address"] == "/run/containerd/containerd.sock"
    assert config["disabled_plugins"] == []
    cri = config["plugins"][CRI]
    assert cri["sandbox_image"] == DEFAULT_TAG
    assert cri["restrict_oom_score_adj"] is restrict
    assert cri["containerd"]["default_runtime_name"] == "runc"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"SystemdCgroup": systemd, "Root": "/run/containerd/runc"}
    assert cri["cni"] == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"] == "/opt/containerd"


def test_every_path_of_a_lab_node_is_its_own() -> None:
    base = '/srv/lab/node "a"'
    config = tomllib.loads(containerd_config.render(
        "lab", sandbox_image="example.org/p:1", root=f"{base}/root", state=f"{base}/state",
        address=f"{base}/c.sock", cni_bin_dir=f"{base}/cni", cni_conf_dir=f"{base}/net.d",
        opt_dir=f"{base}/opt", snapshotter="native"))
    cri = config["plugins"][CRI]
    assert (config["root"], config["state"]) == (f"{base}/root", f"{base}/state")
    assert config["grpc"]["address"] == f"{base}/c.sock"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["Root"] == f"{base}/state/runc"
    assert cri["containerd"]["snapshotter"] == "native"
    assert cri["sandbox_image"] == "example.org/p:1"
    assert cri["cni"] == {"bin_dir": f"{base}/cni", "conf_dir": f"{base}/net.d"}
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"] == f"{base}/opt"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "cloud"}, "host kind 'cloud' is unknown"),
    ({"root": "var/lib/containerd"}, "root 'var/lib/containerd' is not a normalised"),
    ({"state": "/run/../containerd"}, "state '/run/../containerd' is not"),
    ({"address": "/run/" + "x" * 103 + ".sock"}, "longer than a Unix socket path"),
    ({"snapshotter": "zfs"}, "snapshotter 'zfs' is not supported"),
    ({"sandbox_image": "pause 3.10"}, "is not an image reference"),
])
def test_bad_settings_are_named(kwargs: dict[str, str], message: str) -> None:
    kind = kwargs.pop("kind", "lab")
    with pytest.raises(ConfigError, match=re.escape(message)):
        containerd_config.render(kind, **kwargs)  # type: ignore[arg-type]


# --- a real containerd runs the image ----------------------------------------------------

def _containerd_missing() -> str | None:
    if os.geteuid() != 0:
        return "a private containerd needs root"
    missing = [tool for tool in ("containerd", "ctr", "runc") if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install containerd "
                "runc)")
    return None


def _mounts_under(directory: str) -> list[str]:
    points = [line.split()[4].replace("\\040", " ")
              for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == directory or p.startswith(directory + "/")]


def _cmdline_has(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle.encode() in args:
                found.append(int(entry))
    return found


def _remove_dead_sockets(directory: Path, keep: set[str]) -> None:
    """Shim sockets that appeared during the test and that nothing listens on any more (a
    shim killed by force leaves its socket behind); live ones are never touched."""
    if not directory.is_dir():
        return
    for entry in set(os.listdir(directory)) - keep:
        path = directory / entry
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            probe.close()


@pytest.mark.lab
@pytest.mark.skipif(_containerd_missing() is not None, reason=str(_containerd_missing()))
def test_a_private_containerd_imports_and_runs_the_image() -> None:
    base = tempfile.mkdtemp(prefix="mzk-ctr-", dir="/tmp")
    address = f"{base}/containerd.sock"
    state = f"{base}/state"
    runc_root = f"{state}/runc"
    name = f"mzk-pause-{uuid.uuid4().hex[:12]}"
    cgroup = f"/{name}"
    # The runc v2 shim puts its socket in /run/containerd/s whatever the state directory:
    # left behind only if it was there before.
    shared_run = Path("/run/containerd")
    shared_run_existed = shared_run.exists()
    sockets_before = set(os.listdir(shared_run / "s")) if (shared_run / "s").is_dir() else set()
    config = Path(base, "config.toml")
    config.write_text(containerd_config.render(
        "lab", root=f"{base}/root", state=state, address=address, opt_dir=f"{base}/opt"))
    archive = Path(base, "pause.tar")
    archive.write_bytes(oci_image(DEFAULT_TAG, pause_binary()))
    log = Path(base, "containerd.log").open("wb")
    daemon: subprocess.Popen[bytes] | None = None
    run: subprocess.Popen[bytes] | None = None

    def ctr(*args: str, timeout: float = 60) -> str:
        result = subprocess.run(["ctr", "--address", address, "--namespace", "k8s.io", *args],
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"ctr {' '.join(args)}: {result.stderr.strip()}"
        return result.stdout

    try:
        daemon = subprocess.Popen(["containerd", "--config", str(config)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
        wait_for(lambda: daemon.poll() is not None or subprocess.run(
            ["ctr", "--address", address, "version"], capture_output=True,
            timeout=10).returncode == 0, "containerd to serve", timeout=30)
        assert daemon.poll() is None, Path(base, "containerd.log").read_text()[-2000:]

        ctr("images", "import", "--all-platforms", str(archive))
        listed = [line.split() for line in ctr("images", "ls").splitlines()[1:]]
        assert [DEFAULT_TAG, "application/vnd.oci.image.manifest.v1+json", image_digest()] in [
            row[:3] for row in listed], listed

        run = subprocess.Popen(
            ["ctr", "--address", address, "--namespace", "k8s.io", "run", "--rm", "--null-io",
             "--cgroup", cgroup, "--runc-root", runc_root, DEFAULT_TAG, name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def task_pid() -> int | None:
            assert run is not None and run.poll() is None, "ctr run ended early"
            for line in ctr("tasks", "ls").splitlines()[1:]:
                task, pid, status = line.split()
                if task == name and status == "RUNNING":
                    return int(pid)
            return None

        pid = wait_for(task_pid, f"task {name} to run", timeout=60)
        status = Path(f"/proc/{pid}/status").read_text()
        # Our image's config is in force: its user, and the program as pid 1 of the container.
        assert re.search(r"^Uid:\s+65535\s", status, re.M), status
        assert innermost_pid(status) == "1"
        time.sleep(0.2)
        assert run.poll() is None
        ctr("tasks", "kill", "--signal", "SIGTERM", name)
        assert run.wait(timeout=30) == 0, (run.stdout.read() if run.stdout else b"").decode()
        assert name not in ctr("containers", "ls")

        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
        assert _mounts_under(base) == []
        assert _cmdline_has(address) == []  # no shim left behind
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(timeout=10)
        if daemon is not None and daemon.poll() is None:
            # Through containerd first, so that the shim ends and removes its socket.
            for args in (("tasks", "kill", "--signal", "SIGKILL", name),
                         ("tasks", "delete", "--force", name), ("containers", "delete", name)):
                subprocess.run(["ctr", "--address", address, "--namespace", "k8s.io", *args],
                               capture_output=True, timeout=30)
        if Path(runc_root).exists():
            subprocess.run(["runc", "--root", runc_root, "delete", "--force", name],
                           capture_output=True, timeout=30)
        for pid in _cmdline_has(address):  # shims: `containerd-shim-runc-v2 ... -address`
            if daemon is None or pid != daemon.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        log.close()
        for point in reversed(_mounts_under(base)):
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)
        for controller in Path("/sys/fs/cgroup").iterdir():
            leftover = controller / name
            if leftover.is_dir():
                leftover.rmdir()
        shutil.rmtree(base, ignore_errors=True)
        _remove_dead_sockets(shared_run / "s", keep=sockets_before)
        if not shared_run_existed:  # remove what this test created, and only if empty
            for directory in (shared_run / "runc" / "k8s.io", shared_run / "runc",
                              shared_run / "s", shared_run):
                try:
                    directory.rmdir()
                except OSError:
                    pass
