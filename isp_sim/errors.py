"""Exceptions raised for bad input, always naming the offending file or argument."""


class ISPInputError(ValueError):
    """Raised when an image, RAW file or argument cannot be used; the message names it and the problem."""
