"""The one user-facing error type: the CLI prints its message as one line and exits 2."""


class PawError(Exception):
    """A problem with the user's input or environment: what is wrong, what is valid, how to fix.

    Raise it with a single-line message; `paw` prints `paw: error: <message>` and exits 2
    (with a traceback only under `--debug`).
    """
