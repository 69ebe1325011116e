"""The error scgexp raises for unusable input (light: the command line imports it first)."""


class InputError(ValueError):
    """Raised when data given to scgexp cannot be used as it is; the message says what to do."""


InputError.__module__ = "scgexp.data"  # where users import it; tracebacks name it so
