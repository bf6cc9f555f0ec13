"""The one error type pinnzo raises for bad input; the CLI turns it into exit code 2."""


class PinnzoError(Exception):
    """Bad input from the user: a file, a flag, a setting.

    The message is one line that names what was wrong, what was expected and
    what was found. The CLI prints it as ``pinnzo: error: <message>`` and exits
    with code 2, without a traceback.
    """


MAX_MESSAGE = 1000  # characters of one error message


def one_line(text: str) -> str:
    """``text`` as one line of bounded length: control characters (newlines in keys
    or values) escaped, a long message cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:4 * MAX_MESSAGE])
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."
