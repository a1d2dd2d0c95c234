"""How a long sampling call reports its progress without knowing of any bar."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

# Whoever shows a progress bar sets this around a sample() call; a family that makes many network passes per
# image (diffusion) reports the fraction of the call each pass completed. Families know nothing of the bar.
SAMPLING_PROGRESS: ContextVar[Callable[[float], None] | None] = ContextVar("sampling_progress", default=None)
