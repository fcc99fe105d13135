"""Errors a user can cause and fix, as opposed to bugs."""


class UserError(Exception):
    """A bad input: the message says what is wrong and what to do about it."""


class NonFiniteError(UserError):
    """NaN or Inf found in a weight, a layer's statistics or a block's activations, named where it first appeared."""
