"""The error a policy catalog raises when it cannot be loaded or a fact cannot be encoded."""

from __future__ import annotations

from custody.domain.errors import InvalidInput


class PolicyError(InvalidInput):
    """A catalog file or a set of facts is not acceptable; the message names the file and the problem.

    A subclass of InvalidInput so entry points map it to the usage exit code: a broken catalog is
    refused before it can decide anything, never half-loaded.
    """
