"""Replace a whole directory at once: fill a new one beside it, then swap the two.

An import that fails half way (a full disk, a key refused at the tenth host) must leave the
PKI directory exactly as it was; writing file by file into it cannot promise that. So the
new content is written into a private directory beside the target (same file system, so a
rename can move it) and swapped in with one `renameat2(RENAME_EXCHANGE)`: at every instant
the target path is either the old directory or the new one, whole. Where the kernel or the
file system does not offer the exchange, two renames do it, and the target is absent only
between them. The temporary directory is removed on failure, and the old one after the swap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Callable

from bootstrap.errors import ConfigError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
SUFFIX = ".swap"


def temp_beside(target: str) -> str:
    """`<parent>/.<name>.<16 hex digits>.swap`: unpredictable, and recognisable if a
    crash leaves one behind."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}.{secrets.token_hex(8)}{SUFFIX}")


def replace_dir(target: str, fill: Callable[[str], None]) -> None:
    """Make a new directory beside `target`, let `fill` write into it, then put it at
    `target` in one step (the old directory, if any, is removed afterwards). Whatever
    `fill` raises propagates with the target untouched."""
    temp = temp_beside(target)
    try:
        os.mkdir(temp, 0o700)
    except OSError as err:
        raise ConfigError(f"{target}: cannot make {temp} beside it ({err.strerror}); the "
                          "directory that holds it must be writable. Nothing was written") \
            from err
    try:
        fill(temp)
        held_old = _swap(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if held_old:
        shutil.rmtree(temp, ignore_errors=True)  # now the old directory
    _sync_dir(os.path.dirname(os.path.abspath(target)))


def _swap(new: str, target: str) -> bool:
    """Put `new` at `target`; an existing `target` ends up at `new` (then True)."""
    try:
        if not os.path.lexists(target):
            os.rename(new, target)
            return False
        if _exchange(new, target):
            return True
        aside = temp_beside(target)
        os.rename(target, aside)
        try:
            os.rename(new, target)
        except OSError:
            os.rename(aside, target)
            raise
        os.rename(aside, new)
        return True
    except OSError as err:
        raise ConfigError(f"{target}: cannot be replaced ({err.strerror}); give a directory "
                          "on a file system you can write to. Nothing was changed") from err


def _exchange(a: str, b: str) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE); False where the system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
