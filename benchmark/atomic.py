"""A file written whole or not at all: a temporary file beside it, fsynced, renamed over it, its folder fsynced.
A write the system refuses (disk full, file-size limit, I/O error) is one line naming the path and the errno,
and leaves no temporary file behind."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import UserError


class WriteFailed(UserError):
    """The system refused a write: the run ends FAILED with this line as its reason."""


def partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields the temporary path to write; once the block is done it replaces `path`, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial(path)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise write_failed(path, err) from None
        raise


def write_failed(path: Path, err: OSError) -> WriteFailed:
    name = errno.errorcode.get(err.errno, str(err.errno))
    return WriteFailed(f"cannot write {path}: {os.strerror(err.errno)} ({name})")


def fsync(path: Path) -> None:
    """A file's or a folder's contents onto the disk (a folder: the names renamed into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def save_torch(obj: Any, tmp: Path) -> None:
    """torch.save into tmp; the OS error behind a failed write is raised as itself (torch's own writer turns
    it into a RuntimeError that names neither the file nor the errno)."""
    with open(tmp, "wb") as f:
        recorder = _Recorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


class _Recorder(io.RawIOBase):
    """A file object that remembers the OSError of the write that failed."""

    def __init__(self, f):
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise
