"""One exception type whose message is meant for the user, on one line."""


class MlxsmallError(Exception):
    """An error the CLI reports as a single clear line (no traceback).

    Raise it with a message that names the file, key or option at fault and,
    where possible, what to do about it.
    """
