"""The one error type pinnzo raises for bad input; the CLI turns it into exit code 2."""


class PinnzoError(Exception):
    """Bad input from the user: a file, a flag, a setting.

    The message is one line that names what was wrong, what was expected and
    what was found. The CLI prints it as ``pinnzo: error: <message>`` and exits
    with code 2, without a traceback.
    """
