"""Atomic checkpoints that load with weights_only=True and hold everything needed to resume exactly. The
one before the last is kept: a damaged last checkpoint falls back to it instead of losing the run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmark.atomic import atomic_write, partial, save_torch
from benchmark.errors import UserError

log = logging.getLogger(__name__)

LAST = "checkpoints/last.pt"  # a run's checkpoint, relative to its artifact folder


def previous(path: Path) -> Path:
    """checkpoints/last.pt -> checkpoints/last.prev.pt: the checkpoint written before the last."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename: a kill mid-write leaves the previous checkpoints intact, and a
    refused write (disk full) is one line with the path and errno, leaving nothing half-written."""
    staged = None
    try:
        with atomic_write(path) as tmp:
            save_torch(state, tmp)
            # The last becomes the previous with last.pt never missing and never one file with last.prev.pt:
            # were both names one inode (a kill between two renames), damage to last.pt would take the
            # fallback with it.
            if path.exists():
                staged = partial(previous(path))
                staged.unlink(missing_ok=True)
                try:
                    os.link(path, staged)
                except OSError:  # a file system without hard links: rename (a kill here falls back to .prev)
                    os.replace(path, previous(path))
                    staged = None
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    if staged is not None:
        os.replace(staged, previous(path))


def load(path: Path, what: str = "checkpoint") -> Any:
    """A file unpickled with weights_only=True only (a pickle that would run code is refused, never run); a
    damaged or foreign file is one line naming it and `what` it should have been."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, code in the pickle: all one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{what} {path} cannot be read with weights_only=True ({reason[:160]})") from None


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that cannot be read (kept for a post-mortem): left as last.pt, the next save would
    rotate it into last.prev.pt, and a second damage to last.pt would then leave nothing to resume from."""
    aside = path.with_name(f"{path.name}.corrupt.{time.time_ns()}")
    os.replace(path, aside)
    return aside


def exists(path: Path) -> bool:
    return path.is_file() or previous(path).is_file()


def load_latest(path: Path) -> dict[str, Any] | None:
    """The last checkpoint, or the one before it (with a warning) when the last is damaged or missing; None
    when there is neither."""
    if path.is_file():
        try:
            return load(path)
        except UserError as err:
            if not previous(path).is_file():
                raise
            aside = set_aside(path)
            log.warning("%s; set aside as %s, falling back to the checkpoint before it, %s", err, aside.name,
                        previous(path).name)
    elif previous(path).is_file():
        log.warning("checkpoint %s is missing; falling back to the one before it, %s", path, previous(path).name)
    return load(previous(path)) if previous(path).is_file() else None
