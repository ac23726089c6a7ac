"""The one error type users see: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input or an impossible request; the message says what to fix."""
