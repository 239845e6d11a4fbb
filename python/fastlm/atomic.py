"""Atomic file writes: a synced temporary file in the target's directory, then a rename; and
the guarded open and bounded read of the files fastlm reads back (open_regular_file,
read_bounded).

A leaf module (it imports nothing from fastlm), so that every module that writes files
(tokenizer.py, model_dir.py) can use it without importing the others.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def stage(path, write):
    """Call write(temporary_path) on a new temporary file next to path; returns its name.

    The file is synced to disk and made world-readable; the caller renames it into place
    (os.replace) or removes it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp creates 0600 (and safetensors writes its files 0600 too, whatever was there);
        # a saved model is an ordinary readable file
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path, write):
    """Call write(temporary_path), then rename the temporary file to path."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", str(parent))
    tmp = stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_synced(path, write):
    """Call write(path), then sync the file to disk and make it world-readable (as stage does),
    for files in a directory that nothing refers to yet (a save being assembled)."""
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def fsync_directory(path):
    """Sync a directory's entries (new, renamed and removed names) to disk. File systems that
    cannot sync a directory (some network ones) refuse with EINVAL: nothing more can be done."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _file_kind(mode):
    """What a stat mode that is not a regular file's is, in words."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"


def open_regular_file(path):
    """(binary file object, size in bytes) of path opened for reading, which must be a regular
    file once symlinks are followed: FileNotFoundError when nothing is there, ValueError naming
    the path and what is there otherwise. A directory has no bytes to read, a FIFO would block
    the open until a writer came, and a device such as /dev/zero never ends; so the file is
    opened without blocking and checked before a byte is read."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:  # systems that refuse to open a directory at all
        raise ValueError(f"{path} is a directory, not a regular file") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{path} is {_file_kind(status.st_mode)}, not a regular file")
        return os.fdopen(fd, "rb"), status.st_size
    except BaseException:
        os.close(fd)
        raise


def read_bounded(f, size, max_bytes):
    """(bytes, size) of f, a file open_regular_file opened when it held size bytes: the bytes
    None when it holds more than max_bytes, not read at all if it did when opened, else read
    no further than one byte past the bound (it grew since; size is then what was read)."""
    if size > max_bytes:
        return None, size
    raw = f.read(max_bytes + 1)
    return (raw, size) if len(raw) <= max_bytes else (None, len(raw))
