"""The PKI's files on disk, reached only through directory descriptors.

Everything the PKI reads, writes or removes lies under one directory (`--out`), opened
once. Every path below it is walked one component at a time with O_NOFOLLOW from the
descriptor of its parent, so a symbolic link planted anywhere under the directory (a host
directory, `local/`, a subdirectory, a file) is refused with one line, never followed, and
a directory renamed or swapped mid-run cannot redirect a write, a removal or a chmod.

`Tree.write` is the one writer (`write` is its entry for a single path): it keeps a file
whose bytes and mode already fit, fixes only the mode when only the mode differs, and
otherwise replaces it atomically (a temporary file created exclusively, without following
links, under an unpredictable name, then a rename). Every directory the PKI
walks gets its mode (0700 for the output directory and for `pki` directories and what lies
below them, 0755 for the rest), also when it existed with a wider one.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from types import TracebackType

from bootstrap.errors import PKIError

PRIVATE_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o755
PRIVATE_DIR_NAMES = frozenset({"pki"})  # a directory of this name, and all below it: 0700

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: a FIFO planted where a file should be must not hang the run.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
TEMP_SUFFIX = ".tmp"


def temp_name(base: str) -> str:
    """`.<base>.<16 random hex digits>.tmp`: nobody can plant a file or link there ahead
    of us, and `is_temp_of` can still recognise one left behind by a crash."""
    return f".{base}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def is_temp_of(name: str, bases: frozenset[str] | set[str]) -> bool:
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    base, _, token = name[1:-len(TEMP_SUFFIX)].rpartition(".")
    return base in bases and len(token) == 16 and all(c in "0123456789abcdef" for c in token)


def refusal(path: str, st: os.stat_result | None, want: str) -> PKIError:
    """The one-line error for something under the PKI directory that is not what the PKI
    wrote there (`want` is "a directory" or "a regular file")."""
    if st is not None and stat.S_ISLNK(st.st_mode):
        return PKIError(f"{path}: is a symbolic link; the PKI never follows links inside its "
                        f"directory. Remove the link (put {want} there if you need one) and "
                        "run again")
    return PKIError(f"{path}: is not {want}; move it out of the PKI directory and run again")


def current_umask() -> int | None:
    """The process's umask, read without changing it (Linux 4.7+); None if unknown."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class Tree:
    """A directory opened without following links, and the directories below it, each
    opened from its parent's descriptor and kept open (closed with the tree).

    Paths given to the methods are relative to the tree, with '/' between components;
    `path` is only used to name things in messages.
    """

    def __init__(self, path: str, fd: int, *, private: frozenset[str] = PRIVATE_DIR_NAMES,
                 fix_modes: bool = False, umask: int | None = None, made: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.private = private  # directory names that are 0700, with all below them
        # False until the caller knows the directory is the PKI's own: reading a foreign
        # directory to refuse it must not change its modes.
        self.fix_modes = fix_modes
        # Known umask: a mode it leaves whole needs no chmod after creation (a umask that
        # changes meanwhile can only narrow a mode; the next run widens it back).
        self.umask = umask
        self._dirs: dict[str, int] = {"": fd}
        self._made: set[str] = {""} if made else set()  # directories this tree created
        # rel -> (bytes, mode, links) of files read: a write of the same bytes right after
        # (a re-run keeps nearly everything) needs no second look at the disk.
        self._seen: dict[str, tuple[bytes, int, int]] = {}

    @property
    def made(self) -> bool:
        """Whether this run created the tree's own directory (so it held nothing before)."""
        return "" in self._made

    def claim(self, own_mode: int) -> None:
        """From now on directories get their modes: this one `own_mode`, those below it
        (already opened or not) theirs."""
        self.fix_modes = True
        self._fix_mode(self.fd, own_mode)
        for rel_dir, fd in self._dirs.items():
            if rel_dir:
                self._fix_mode(fd, self.dir_mode(rel_dir))

    def dir_mode(self, rel_dir: str) -> int:
        """0700 for a directory named in `private` and everything below it, else 0755."""
        return PRIVATE_DIR_MODE if self.private.intersection(rel_dir.split("/")) \
            else PUBLIC_DIR_MODE

    # -- opening and closing

    @classmethod
    def open(cls, path: str, private: frozenset[str] = PRIVATE_DIR_NAMES) -> Tree:
        """An existing directory `path`; a symbolic link or a file there is refused (the
        directories above it are the caller's own path, and are followed)."""
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.ELOOP):
                try:
                    st = os.lstat(path)
                except OSError:
                    st = None
                raise refusal(path, st, "a directory") from err
            raise
        return cls(path, fd, private=private, umask=current_umask())

    def sub(self, name: str, *, create: bool, own_mode: int) -> Tree | None:
        """The directory `name` directly below this one, as a tree of its own (closed on
        its own, so that thousands of hosts do not keep thousands of descriptors); None if
        it does not exist and `create` is false."""
        opened = self._open_dir(self.fd, name, f"{self.path}/{name}", own_mode, create)
        if opened is None:
            return None
        return Tree(f"{self.path}/{name}", opened[0], fix_modes=self.fix_modes,
                    umask=self.umask, made=opened[1])

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def full(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    # -- directories

    def dir_fd(self, rel_dir: str, *, create: bool) -> int | None:
        """The descriptor of directory `rel_dir`, each component opened without following
        links; missing ones are made when `create` (else None)."""
        fd = self._dirs.get(rel_dir)
        if fd is not None:
            return fd
        parent_rel, _, name = rel_dir.rpartition("/")
        parent = self.dir_fd(parent_rel, create=create)
        if parent is None:
            return None
        opened = self._open_dir(parent, name, self.full(rel_dir), self.dir_mode(rel_dir),
                                create, parent_made=parent_rel in self._made)
        if opened is None:
            return None
        self._dirs[rel_dir] = opened[0]
        if opened[1]:
            self._made.add(rel_dir)
        return opened[0]

    def _open_dir(self, parent: int, name: str, path: str, mode: int, create: bool,
                  parent_made: bool = False) -> tuple[int, bool] | None:
        """(descriptor, whether it was made now) of directory `name` in `parent`."""
        if not name or name in (".", "..") or "/" in name:
            raise PKIError(f"{path}: {name!r} is not a plain directory name")
        made = False
        if create and parent_made:  # an empty parent: no need to look first
            made = self._mkdir(parent, name, mode)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            made = self._mkdir(parent, name, mode)
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as err:
                raise refusal(path, _lstat_at(parent, name), "a directory") from err
        except OSError as err:
            if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise refusal(path, _lstat_at(parent, name), "a directory") from err
        if (self.fix_modes and not made) or (made and self._cut(mode)):
            Tree._fix_mode(fd, mode)
        return fd, made

    @staticmethod
    def _mkdir(parent: int, name: str, mode: int) -> bool:
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except FileExistsError:
            return False  # there already (or made meanwhile): opened and checked as such
        return True

    def _cut(self, mode: int) -> bool:
        """Might the umask have taken bits off `mode` at creation?"""
        return self.umask is None or bool(mode & self.umask)

    @staticmethod
    def _fix_mode(fd: int, mode: int) -> None:
        """The directory's mode, set through its descriptor (mkdir's is cut by the umask;
        an existing directory may be wider, 0777 say)."""
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)

    def names(self, rel_dir: str) -> list[str]:
        """The entries of an existing directory ([] if it is missing); nothing is followed."""
        fd = self.dir_fd(rel_dir, create=False)
        if fd is None:
            return []
        with os.scandir(fd) as it:
            return [e.name for e in it]

    def rmdir_if_empty(self, rel_dir: str) -> bool:
        parent_rel, _, name = rel_dir.rpartition("/")
        parent = self.dir_fd(parent_rel, create=False)
        if parent is None:
            return False
        fd = self._dirs.pop(rel_dir, None)
        if fd is not None:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            if err.errno == errno.ENOTDIR:  # a link or a file: never ours to remove
                raise refusal(self.full(rel_dir), _lstat_at(parent, name),
                              "a directory") from err
            raise
        return True

    # -- files

    def _open_file(self, dir_fd: int, name: str, rel: str) -> tuple[int, os.stat_result] | None:
        """An existing regular file, opened for reading without following a link; None if
        there is nothing there."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise refusal(self.full(rel), _lstat_at(dir_fd, name), "a regular file") from err
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise refusal(self.full(rel), st, "a regular file")
        return fd, st

    def read(self, rel: str) -> bytes | None:
        """The bytes of a regular file, None if it (or its directory) does not exist."""
        parent_rel, _, name = rel.rpartition("/")
        dir_fd = self.dir_fd(parent_rel, create=False)
        if dir_fd is None:
            return None
        opened = self._open_file(dir_fd, name, rel)
        if opened is None:
            return None
        fd, st = opened
        try:
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        self._seen[rel] = (data, st.st_mode, st.st_nlink)
        return data

    def write(self, rel: str, content: bytes, mode: int, durable: bool = False) -> bool:
        """Make `rel` hold `content` with `mode`; True if anything changed. See the module
        docstring; `durable` also syncs the file and its directory (CA keys, say)."""
        seen = self._seen.pop(rel, None)
        if seen is not None and seen[0] == content and stat.S_IMODE(seen[1]) == mode and \
                seen[2] == 1:
            return False
        parent_rel, _, name = rel.rpartition("/")
        dir_fd = self.dir_fd(parent_rel, create=True)
        assert dir_fd is not None
        # In a directory this run made there is nothing to compare with.
        opened = None if parent_rel in self._made else self._open_file(dir_fd, name, rel)
        if opened is not None:
            fd, st = opened
            try:
                # A second hard link (a backup made with `cp -l`, or a planted one) is never
                # changed in place: the rename below detaches this name from it.
                if st.st_nlink == 1 and st.st_size == len(content) and \
                        _read_all(fd, st.st_size) == content:
                    if stat.S_IMODE(st.st_mode) == mode:
                        return False
                    os.fchmod(fd, mode)
                    return True
            finally:
                os.close(fd)
        tmp = temp_name(name)
        try:
            fd = os.open(tmp, _TEMP_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError as err:  # 64 random bits: planted, not chance
            raise PKIError(f"{self.full(parent_rel)}/{tmp}: exists before the PKI made it; "
                           "something else is writing into the PKI directory. Find out what, "
                           "remove the file and run again") from err
        try:
            try:
                if self._cut(mode):
                    os.fchmod(fd, mode)
                _write_all(fd, content)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as err:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise PKIError(f"{self.full(rel)}: cannot be written ({err.strerror or err}); "
                               "fix that and run again") from err
            raise
        if durable:
            os.fsync(dir_fd)
        return True

    def unlink(self, rel: str) -> bool:
        """Remove a regular file the PKI wrote; True if there was one. A link or anything
        but a regular file there is refused, not removed."""
        parent_rel, _, name = rel.rpartition("/")
        dir_fd = self.dir_fd(parent_rel, create=False)
        if dir_fd is None:
            return False
        st = _lstat_at(dir_fd, name)
        if st is None:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise refusal(self.full(rel), st, "a regular file")
        os.unlink(name, dir_fd=dir_fd)
        self._seen.pop(rel, None)
        return True


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int, size: int) -> bytes:
    """The whole file, usually in one read (size + 1 bytes: fewer means the end)."""
    chunks = [os.read(fd, size + 1)]
    while len(chunks[-1]) > size or (len(chunks) > 1 and chunks[-1]):
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks)


def write(path: str | os.PathLike[str], content: bytes, mode: int, durable: bool = False,
          *, tree: Tree | None = None) -> bool:
    """The one atomic writer (see `Tree.write`). `path` is the file's full path; with a
    `tree` it must lie below `tree.path` and is reached through the tree's descriptors,
    else its own directory (which must exist, and not be a link) is opened for the call."""
    name = os.fspath(path)
    if tree is not None:
        prefix = tree.path + "/"
        if not name.startswith(prefix):
            raise ValueError(f"{name} is not below {tree.path}")
        return tree.write(name[len(prefix):], content, mode, durable)
    directory, base = os.path.split(name)
    directory = directory or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, PRIVATE_DIR_MODE)
    with Tree.open(directory) as own:
        return own.write(base, content, mode, durable)
