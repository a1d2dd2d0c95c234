"""The one exception type for mistakes a user can make (bad path, bad budget, unknown key)."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message as one line and exits non-zero."""


class Diverged(UserError):
    """Training produced NaN or infinity: the run fails with that reason (in a study, the trial does)."""
