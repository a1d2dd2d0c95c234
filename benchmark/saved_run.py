"""A run as `bench run` saved it, from wherever it lives (this machine's store, or a tracking server seen from
another machine with an empty cache): its tracker, spec, model family and latest checkpoint. A resume,
`bench eval` and `bench sample` all load a run through here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import checkpoint
from benchmark.errors import UserError
from benchmark.models import family
from benchmark.spec import RunSpec, build_spec, load_toml
from benchmark.tracking import Tracker


@dataclass
class SavedRun:
    tracker: Tracker
    spec: RunSpec
    family: type

    def checkpoint_path(self) -> Path:
        """The local path of the run's checkpoint, fetched (with the one before it) from a remote store."""
        return self.tracker.fetch(checkpoint.LAST)

    def latest(self) -> dict[str, Any]:
        """The latest readable checkpoint's state; a run without one is one line."""
        path = self.checkpoint_path()
        state = checkpoint.load_latest(path)
        if state is None:
            raise UserError(f"run {self.tracker.run_id} has no checkpoint yet ({path})")
        return state


def open_run(run_id: str) -> SavedRun:
    tracker = Tracker.open(run_id)
    spec_path = tracker.fetch("spec.toml")
    if not spec_path.is_file():
        raise UserError(f"run {run_id} has no spec.toml: it was not started by bench run")
    saved = load_toml(spec_path)
    cls, defaults = family(saved.get("model", ""))
    return SavedRun(tracker, build_spec(saved["model"], defaults, saved), cls)
