"""The one exception type for mistakes a user can make (bad path, bad budget, unknown key), and the hint
that turns a typo into the name meant."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message as one line and exits non-zero."""


class Diverged(UserError):
    """Training produced NaN or infinity: the run fails with that reason (in a study, the trial does)."""


def did_you_mean(word: str, choices) -> str:
    """"; did you mean 'dcgan'?" for a close enough choice, else ""."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
