"""Errors a user can cause and fix, as opposed to bugs."""


class UserError(Exception):
    """A bad input: the message says what is wrong and what to do about it."""
