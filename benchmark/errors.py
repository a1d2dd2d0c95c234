"""The one exception type for mistakes a user can make (bad path, bad budget, unknown key)."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message as one line and exits non-zero."""
