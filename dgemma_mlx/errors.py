"""The one exception type that reaches users as a single line instead of a traceback."""


class DGemmaError(Exception):
    """An expected failure with a one-line message for the user."""
