"""Backing off failed authentications: the portal's sign-in and the API.

Per server process and in memory (a restart forgets); the tokens themselves carry 256 random
bits, so this slows guessing and floods, it is not what makes guessing hopeless.

Who waits (`Backoff`): failures with a token whose id names a principal count against that
token id (someone guessing its secret, from however many addresses); failures with any other
token (malformed, missing, unknown id) count against the address they came from. Only failures
ever wait: a token that authenticates is served at once, whatever else failed from its address
or with its id, so nobody can lock a valid token out by failing with it or beside it. Nothing
resets a count but time: a success must not wipe what other tokens' failures built up.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass

from custody.control import door, tokens
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace
from custody.domain.errors import AuthenticationError


class Throttle:
    """After FREE failures under one key, each further attempt waits 2^k seconds (to MAX_WAIT)."""

    FREE = 3
    MAX_WAIT = 300
    FORGET = 3600

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures, time of the last)

    def _left(self, key: str, now: float) -> tuple[int, int]:
        count, last = self._failures.get(key, (0, 0.0))
        if now - last > self.FORGET:
            return 0, 0
        if count < self.FREE:
            return count, 0
        return count, max(0, int(last + min(self.MAX_WAIT, 2 ** (count - self.FREE + 1)) - now + 0.999))

    def blocked(self, key: str) -> int:
        """Seconds this key must still wait (0: it may try)."""
        with self._lock:
            return self._left(key, time.time())[1]

    def attempt(self, key: str) -> int:
        """Like `blocked`, but a try that may go ahead is counted as a failure at once: parallel
        guesses queue behind each other instead of all passing one check."""
        with self._lock:
            now = time.time()
            count, left = self._left(key, now)
            if left:
                return left
            self._record(key, count + 1, now)
            return 0

    def failed(self, key: str) -> None:
        with self._lock:
            now = time.time()
            self._record(key, self._left(key, now)[0] + 1, now)

    def _record(self, key: str, count: int, now: float) -> None:
        self._failures[key] = (count, now)
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            for old, _ in sorted(self._failures.items(), key=lambda kv: kv[1][1])[:1000]:
                self._failures.pop(old, None)


@dataclass(frozen=True)
class Admission:
    """`wait`: seconds before trying again (0: go ahead). `counted`: the try already counts as a
    failure (taken before it ran), so a failure must not be counted again."""

    wait: int = 0
    counted: bool = False
    by_token: bool = False

    @property
    def about(self) -> str:
        return "for this token" if self.by_token else "from this address"


class Backoff:
    """Decides, per request, whether a token's failures wait and under which key they count."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._throttle = Throttle()

    def admit(self, token: str | None, address: str) -> Admission:
        """A malformed or missing token is counted against its address before it is tried. A
        well-formed one goes ahead when neither its id nor its address is backed off (at most one
        try per server thread is then in flight uncounted); otherwise it is looked up: a valid
        token goes ahead, any other waits on the key its failure would count against."""
        token_id = tokens.parse_id(token or "")
        if token_id is None:
            return self._reserve(_by_address(address), by_token=False)
        if not (self._throttle.blocked(_by_address(address)) or self._throttle.blocked(_by_token(token_id))):
            return Admission()
        valid, key = self._judge(token or "", token_id, address)
        return Admission() if valid else self._reserve(key, by_token=key == _by_token(token_id))

    def failed(self, token: str | None, address: str, admission: Admission) -> None:
        """Count a refused authentication, unless it already counts; a valid token's failure (a
        sealed keyring, say) is not a guess and counts nowhere."""
        if admission.counted:
            return
        token_id = tokens.parse_id(token or "")
        if token_id is None:
            self._throttle.failed(_by_address(address))
            return
        valid, key = self._judge(token or "", token_id, address)
        if not valid:
            self._throttle.failed(key)

    def _reserve(self, key: str, *, by_token: bool) -> Admission:
        wait = self._throttle.attempt(key)
        return Admission(wait=wait, counted=not wait, by_token=by_token)

    def _judge(self, token: str, token_id: str, address: str) -> tuple[bool, str]:
        """Whether the token authenticates, and the key its failures count against."""
        with self._ws.uow(readonly=True) as uow:
            if repo.principal_by_token_id(uow, token_id) is None:
                return False, _by_address(address)
            try:
                door.authenticate(uow, token)
            except AuthenticationError:
                return False, _by_token(token_id)
        return True, _by_token(token_id)


def _by_token(token_id: str) -> str:
    return f"token:{token_id}"


def _by_address(address: str) -> str:
    """An IPv6 client is counted by its /64: one host is usually given a whole /64 to rotate through."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"address:{address}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"address:{ip}"
