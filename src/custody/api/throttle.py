"""Backing off an address that keeps failing to authenticate: the portal's sign-in and the API.

Per server process and in memory (a restart forgets); the tokens themselves carry 256 random
bits, so this slows guessing and floods, it is not what makes guessing hopeless.
"""

from __future__ import annotations

import threading
import time


class Throttle:
    """After FREE failures from one address, each further attempt waits 2^k seconds (to MAX_WAIT)."""

    FREE = 3
    MAX_WAIT = 300
    FORGET = 3600

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (failures, time of the last)

    def _left(self, address: str, now: float) -> tuple[int, int]:
        count, last = self._failures.get(address, (0, 0.0))
        if now - last > self.FORGET:
            return 0, 0
        if count < self.FREE:
            return count, 0
        return count, max(0, int(last + min(self.MAX_WAIT, 2 ** (count - self.FREE + 1)) - now + 0.999))

    def blocked(self, address: str) -> int:
        """Seconds this address must still wait (0: it may try)."""
        with self._lock:
            return self._left(address, time.time())[1]

    def attempt(self, address: str) -> int:
        """Like `blocked`, but a try that may go ahead is counted as a failure until `succeeded`:
        parallel guesses queue behind each other instead of all passing one check."""
        with self._lock:
            now = time.time()
            count, left = self._left(address, now)
            if left:
                return left
            self._record(address, count + 1, now)
            return 0

    def failed(self, address: str) -> None:
        with self._lock:
            now = time.time()
            self._record(address, self._left(address, now)[0] + 1, now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _record(self, address: str, count: int, now: float) -> None:
        self._failures[address] = (count, now)
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            for key, _ in sorted(self._failures.items(), key=lambda kv: kv[1][1])[:1000]:
                self._failures.pop(key, None)
