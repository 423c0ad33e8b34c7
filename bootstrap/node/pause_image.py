"""The pod sandbox ("pause") image, built here from nothing: no registry, no compiler.

No container registry is reachable from our hosts, so the image containerd's CRI plugin
starts as every pod's sandbox is made by this module and imported on each node.

`pause_binary()` is a static Linux x86-64 program, hand-assembled below (410 bytes,
no libc, no compiler at run time). It does what the upstream pause does:

- installs handlers for SIGINT and SIGTERM that exit with status 0 (a pid-1 process in a
  pid namespace gets only the signals it has handlers for, so the handlers are required);
- installs a SIGCHLD handler that reaps every exited child (`wait4(-1, NULL, WNOHANG)` in
  a loop): in a pod whose containers share the pid namespace, orphans are re-parented to
  the sandbox, and without this they would stay zombies;
- then calls `pause()` forever.

On x86-64 the kernel returns from a handler through the `sa_restorer` the program gives it
(SA_RESTORER), which must call `rt_sigreturn`; libc normally supplies it, so we do.

`oci_image(tag, binary)` packs the program as a one-layer OCI image in an `oci-archive`
tar that `ctr images import` reads, byte-for-byte reproducible (bootstrap.node.oci_archive).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bootstrap.node import oci_archive

# A name of our own, in the repository the kubelet and containerd expect for the sandbox
# (registry.k8s.io/pause), with a tag upstream does not have ("-mzk"): `crictl images` shows
# at a glance that this is not the upstream image, and a node that lacks it fails to pull
# it (the tag does not exist upstream) instead of silently running something else. 3.10 is
# the pause version that Kubernetes 1.31-1.36 name as their sandbox image.
DEFAULT_TAG = "registry.k8s.io/pause:3.10-mzk"
ARCHIVE_PATH = "/var/lib/mzk/images/pause.tar"  # on lab nodes, imported from there
UID_GID = "65535:65535"  # as upstream: the sandbox needs no privilege at all

LOAD_ADDRESS = 0x400000  # where the one PT_LOAD segment (the whole file) is mapped

# Linux x86-64 system call numbers and constants used below.
SYS_RT_SIGACTION, SYS_RT_SIGRETURN, SYS_PAUSE = 13, 15, 34
SYS_WAIT4, SYS_EXIT_GROUP = 61, 231
SIGINT, SIGTERM, SIGCHLD = 2, 15, 17
SA_NOCLDSTOP, SA_RESTORER, SA_RESTART = 0x1, 0x04000000, 0x10000000
WNOHANG = 1

# struct sigaction as the kernel takes it (not libc's): 32 bytes on the stack at rsp.
#   [rsp+0] sa_handler   [rsp+8] sa_flags   [rsp+16] sa_restorer   [rsp+24] sa_mask (8 bytes)


def _imm32(value: int) -> bytes:
    return struct.pack("<i" if value < 0 else "<I", value)


@dataclass(frozen=True)
class Instruction:
    """One machine instruction: its bytes, or an opcode whose rel8/rel32 operand points at a
    label (resolved relative to the end of the instruction), and its assembly text."""

    text: str
    code: bytes
    target: str | None = None
    rel_size: int = 0

    @property
    def size(self) -> int:
        return len(self.code) + self.rel_size


@dataclass(frozen=True)
class Label:
    name: str


def _mov_eax(value: int, why: str) -> Instruction:
    return Instruction(f"mov eax,{value:#x}  ; {why}", b"\xb8" + _imm32(value))


def _syscall() -> Instruction:
    return Instruction("syscall", b"\x0f\x05")


def _install(signal: int, handler: str, flags: int) -> list[Instruction | Label]:
    """rt_sigaction(signal, &act, NULL, 8) with act at rsp; exit 1 if the kernel refuses."""
    return [
        Instruction(f"lea rax,[rip+{handler}]", b"\x48\x8d\x05", handler, 4),
        Instruction("mov QWORD PTR [rsp],rax  ; sa_handler", b"\x48\x89\x04\x24"),
        Instruction(f"mov QWORD PTR [rsp+0x8],{flags:#x}  ; sa_flags",
                    b"\x48\xc7\x44\x24\x08" + _imm32(flags)),
        _mov_eax(SYS_RT_SIGACTION, "rt_sigaction"),
        Instruction(f"mov edi,{signal:#x}  ; signum", b"\xbf" + _imm32(signal)),
        Instruction("mov rsi,rsp  ; act", b"\x48\x89\xe6"),
        Instruction("xor edx,edx  ; oldact = NULL", b"\x31\xd2"),
        Instruction("mov r10d,0x8  ; sizeof(sa_mask)", b"\x41\xba" + _imm32(8)),
        _syscall(),
        Instruction("test rax,rax  ; 0 or -errno", b"\x48\x85\xc0"),
        Instruction("jne fail", b"\x75", "fail", 1),
    ]


def program() -> list[Instruction | Label]:
    """The whole program, in order; `pause_binary` assembles it."""
    sigterm_flags = SA_RESTORER
    sigchld_flags = SA_RESTORER | SA_RESTART | SA_NOCLDSTOP
    return [
        Label("_start"),
        Instruction("sub rsp,0x20  ; room for struct sigaction", b"\x48\x83\xec\x20"),
        Instruction("lea rax,[rip+restorer]", b"\x48\x8d\x05", "restorer", 4),
        Instruction("mov QWORD PTR [rsp+0x10],rax  ; sa_restorer", b"\x48\x89\x44\x24\x10"),
        Instruction("xor eax,eax", b"\x31\xc0"),
        Instruction("mov QWORD PTR [rsp+0x18],rax  ; sa_mask = {}", b"\x48\x89\x44\x24\x18"),
        *_install(SIGTERM, "on_term", sigterm_flags),
        *_install(SIGINT, "on_term", sigterm_flags),
        *_install(SIGCHLD, "on_chld", sigchld_flags),
        Label("forever"),
        _mov_eax(SYS_PAUSE, "pause"),
        _syscall(),
        Instruction("jmp forever  ; a handler ran (-EINTR): pause again", b"\xeb", "forever", 1),

        Label("fail"),  # a handler could not be installed: exit 1, do not run half-made
        Instruction("mov edi,0x1  ; status", b"\xbf" + _imm32(1)),
        _mov_eax(SYS_EXIT_GROUP, "exit_group"),
        _syscall(),

        Label("on_term"),  # SIGINT, SIGTERM: exit_group(0)
        Instruction("xor edi,edi  ; status 0", b"\x31\xff"),
        _mov_eax(SYS_EXIT_GROUP, "exit_group"),
        _syscall(),

        Label("on_chld"),  # SIGCHLD: reap every exited child, then return
        Label("reap"),
        Instruction("mov rdi,0xffffffffffffffff  ; pid -1: any child",
                    b"\x48\xc7\xc7" + _imm32(-1)),
        Instruction("xor esi,esi  ; status = NULL", b"\x31\xf6"),
        Instruction(f"mov edx,{WNOHANG:#x}  ; WNOHANG", b"\xba" + _imm32(WNOHANG)),
        Instruction("xor r10d,r10d  ; rusage = NULL", b"\x45\x31\xd2"),
        _mov_eax(SYS_WAIT4, "wait4"),
        _syscall(),
        Instruction("test rax,rax  ; >0 reaped one, 0 none exited, <0 no children",
                    b"\x48\x85\xc0"),
        Instruction("jg reap", b"\x7f", "reap", 1),
        Instruction("ret  ; to sa_restorer", b"\xc3"),

        Label("restorer"),  # the kernel's way back from a handler
        _mov_eax(SYS_RT_SIGRETURN, "rt_sigreturn"),
        _syscall(),
    ]


def assemble(items: list[Instruction | Label], origin: int) -> tuple[bytes, dict[str, int]]:
    """Machine code for `items` placed at address `origin`, and every label's address."""
    labels: dict[str, int] = {}
    address = origin
    for item in items:
        if isinstance(item, Label):
            if item.name in labels:
                raise ValueError(f"label {item.name} defined twice")
            labels[item.name] = address
        else:
            address += item.size
    out = bytearray()
    for item in items:
        if isinstance(item, Label):
            continue
        out += item.code
        if item.target is not None:
            end = origin + len(out) + item.rel_size
            offset = labels[item.target] - end
            limit = 1 << (8 * item.rel_size - 1)
            if not -limit <= offset < limit:
                raise ValueError(f"{item.text}: {item.target} is out of rel{8 * item.rel_size} "
                                 "range")
            out += offset.to_bytes(item.rel_size, "little", signed=True)
    return bytes(out), labels


ELF_HEADER_SIZE, PROGRAM_HEADER_SIZE = 64, 56
PT_LOAD, PT_GNU_STACK = 1, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4


def pause_binary() -> bytes:
    """The pause program as a static ELF64 executable for Linux x86-64."""
    headers = ELF_HEADER_SIZE + 2 * PROGRAM_HEADER_SIZE
    code, labels = assemble(program(), LOAD_ADDRESS + headers)
    size = headers + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, v1, SysV
    elf_header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,                     # e_type: ET_EXEC
        0x3E,                  # e_machine: EM_X86_64
        1,                     # e_version
        labels["_start"],      # e_entry
        ELF_HEADER_SIZE,       # e_phoff: program headers right after this header
        0,                     # e_shoff: no section headers (none are needed to run)
        0,                     # e_flags
        ELF_HEADER_SIZE,       # e_ehsize
        PROGRAM_HEADER_SIZE,   # e_phentsize
        2,                     # e_phnum
        64,                    # e_shentsize
        0,                     # e_shnum
        0,                     # e_shstrndx
    )
    # One read+execute segment: the whole file, mapped at LOAD_ADDRESS.
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, 0, LOAD_ADDRESS, LOAD_ADDRESS,
                       size, size, 0x1000)
    # A non-executable stack, said explicitly.
    stack = struct.pack("<IIQQQQQQ", PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16)
    binary = elf_header + load + stack + code
    assert len(binary) == size
    return binary


# --- the OCI image -------------------------------------------------------------------------


def image_blobs(binary: bytes) -> oci_archive.ImageBlobs:
    """The three blobs of the image; none depends on the tag."""
    return oci_archive.image_blobs(
        [("pause", 0o755, binary)],
        {"Entrypoint": ["/pause"], "User": UID_GID, "WorkingDir": "/"})


def image_digest(binary: bytes | None = None) -> str:
    """The manifest digest (`sha256:...`) of the image of `binary` (default: ours): what
    `ctr images ls` and `crictl images --digests` show, whatever the tag."""
    return image_blobs(pause_binary() if binary is None else binary).manifest_digest


def oci_image(tag: str = DEFAULT_TAG, binary: bytes | None = None) -> bytes:
    """An `oci-archive` (a tar of an OCI image layout) of the one-layer image of `binary`
    (default: `pause_binary()`), named `tag` in index.json."""
    return oci_archive.archive(tag, image_blobs(pause_binary() if binary is None else binary))
