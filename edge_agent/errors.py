"""Errors the agent reports to the user as one line at start-up (exit 2), never a traceback."""


class StartupError(Exception):
    """The agent cannot start with this configuration on this machine; the message says why."""
