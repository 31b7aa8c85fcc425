"""Whole files or nothing: a profile is written beside its destination and
takes its name in one step, so a reader never sees half of one."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["check_writable", "replace_file", "replace_file_with"]

#: Tries at a free temporary name before giving up (each is random).
_TRIES = 100


def replace_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a new file in the same folder (a rename never crosses
    file systems there), made with the permissions ``open()`` would give, and
    ``os.replace`` then swaps it in. If anything fails, ``path`` is left as
    it was and the temporary file is removed.
    """
    replace_file_with(path, lambda file: file.write(data))


def replace_file_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """:func:`replace_file` with what ``write`` writes to the (binary) file
    it is given: a file written piece by piece, never whole in memory."""
    path = os.fspath(path)
    descriptor, temporary = _new_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def check_writable(path: str | os.PathLike[str]) -> None:
    """OSError unless :func:`replace_file` can write ``path``: it is not a
    folder, and its folder exists and takes new files (tried for real: the
    permission bits do not tell about read-only mounts or ACLs)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    descriptor, temporary = _new_temporary(path)
    os.close(descriptor)
    os.unlink(temporary)


def _new_temporary(path: str) -> tuple[int, str]:
    """A new, empty file beside ``path``, hidden, open for writing."""
    folder, name = os.path.split(path)
    for _ in range(_TRIES):
        temporary = os.path.join(folder, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", folder or os.curdir)
