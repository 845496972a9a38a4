"""Errors custody raises, each tied to one CLI exit code (DESIGN.md §Interfaces).

Every error carries a one-line message meant for people; it must never contain a secret
(token, passphrase, key material).
"""

from __future__ import annotations


class CustodyError(Exception):
    """Base class: an action did not happen, and the message says why."""

    exit_code = 1
    outcome = "error"  # how the ledger records an action that ended with this error

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def details(self) -> dict:
        """What a caller needs beyond the message (a denied request's decision, a failed drill's
        report); rendered next to `error` and `exit_code` by the CLI's --json and the API alike."""
        return {}

    def __str__(self) -> str:
        return self.message


class UsageError(CustodyError):
    """The command line or an argument is malformed."""

    exit_code = 2
    outcome = "invalid"


class InvalidInput(UsageError):
    """A value given by the caller (a name, a path, a file) is not acceptable."""


class Denied(CustodyError):
    """Authentication failed or policy refused the action."""

    exit_code = 3
    outcome = "denied"


class AuthenticationError(Denied):
    """Missing, unknown, malformed or suspended token; or a wrong passphrase."""


class NotFound(CustodyError):
    exit_code = 4
    outcome = "not_found"


class IntegrityError(CustodyError):
    """Bytes, signatures or the ledger do not verify."""

    exit_code = 5
    outcome = "integrity_failure"


class InvalidState(CustodyError):
    """The object exists but is not in a state that allows the action."""

    exit_code = 6
    outcome = "invalid_state"


class FormatError(InvalidInput):
    """A model file is malformed (bad header, out-of-bounds offsets, ...)."""


class RemoteError(CustodyError):
    """An error a custody server returned: its message, exit code and details, as the server gave them."""

    def __init__(self, message: str, exit_code: int, details: dict | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self._details = details or {}

    @property
    def details(self) -> dict:
        return self._details
