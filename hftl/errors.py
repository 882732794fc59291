"""User-facing errors.

An `HftlError` is bad input the user can fix: the CLI prints its message as one paragraph and
exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""


class HftlError(Exception):
    """Bad input: the message names the problem and the fix."""


class BadRow(ValueError):
    """One row of input that `hftl predict` cannot use (empty text, an unreadable image): the message says why.
    Not bad input by itself: the command names the first such row (`bad_rows: error`) or skips and lists them."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty), for one-paragraph errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class SaveFailed(HftlError):
    """A save that failed (a full disk): the run adds which checkpoint is kept and how to continue."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the CLI prints the message (the last checkpoint, the resume command) and exits with 130.
    Still a KeyboardInterrupt, so a script of its own that trains through hftl stops as it would."""

    exit_code = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
