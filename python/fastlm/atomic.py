"""Atomic file writes: a synced temporary file in the target's directory, then a rename.

A leaf module (it imports nothing from fastlm), so that every module that writes files
(tokenizer.py, model_dir.py) can use it without importing the others.
"""

from __future__ import annotations

import errno
import os
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
