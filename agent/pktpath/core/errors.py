"""The one exception type the CLI turns into a sentence and an exit code."""

from __future__ import annotations

# Exit codes, documented in README.md.
EXIT_OK = 0
EXIT_FAILURE = 1  # missing privilege, kernel feature, or a failure while tracing
EXIT_USAGE = 2  # bad command line: unknown namespace, interface, protocol, flag


class PktpathError(Exception):
    """An error a user can act on: ``str(err)`` is one sentence saying what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(PktpathError):
    """Bad input on the command line (or in a trace request): exit code 2, nothing attached."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_USAGE)
