"""Per-tenant request rate limit (a token bucket refilled continuously), failed
authentications per client address, per-tenant open slots, and per-tenant turns.

Each tenant may burst up to `per_minute` requests, then gets one more every
`60 / per_minute` seconds. State is in-process: with several API processes the effective
limit is per process.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """`acquire(tenant)` takes one token, or says how long to wait for the next one."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(max(1, per_minute))
        self.rate = self.capacity / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str) -> float:
        """Take a token for `tenant`: 0.0 when allowed, else the seconds until one is free."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(self.capacity, now)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def refund(self, tenant: str) -> None:
        """Give back a token taken for a request that will be charged again elsewhere."""
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is not None:
                bucket.tokens = min(self.capacity, bucket.tokens + 1.0)


# Addresses remembered at most (many attacking addresses must not grow memory without
# bound); past it, expired windows are dropped.
_MAX_TRACKED_ADDRESSES = 100_000
WINDOW_S = 60.0


class FailureThrottle:
    """Counts failed authentications per client address in fixed one-minute windows.

    `blocked_for(address)` is how long the address must wait once it has failed `limit`
    times in its current window (0.0 when it may try). A limit of 0 disables it."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # address -> (start, failures)
        self._lock = threading.Lock()

    def blocked_for(self, address: str) -> float:
        if self.limit <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            start, failures = self._windows.get(address, (now, 0))
        left = start + WINDOW_S - now
        return left if failures >= self.limit and left > 0 else 0.0

    def record_failure(self, address: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock()
        with self._lock:
            start, failures = self._windows.get(address, (now, 0))
            if now - start >= WINDOW_S:
                start, failures = now, 0
            self._windows[address] = (start, failures + 1)
            if len(self._windows) > _MAX_TRACKED_ADDRESSES:
                self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        self._windows = {a: w for a, w in self._windows.items() if now - w[0] < WINDOW_S}
        if len(self._windows) > _MAX_TRACKED_ADDRESSES:
            # Too many live attackers to remember: forget them rather than grow unbounded.
            self._windows.clear()


class TenantSlots:
    """A per-tenant count of something held open (event streams), capped at `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str) -> bool:
        """Take a slot for `tenant`; False when it already holds `limit`."""
        with self._lock:
            held = self._held.get(tenant, 0)
            if held >= self.limit:
                return False
            self._held[tenant] = held + 1
            return True

    def release(self, tenant: str) -> None:
        with self._lock:
            held = self._held.get(tenant, 0) - 1
            if held > 0:
                self._held[tenant] = held
            else:
                self._held.pop(tenant, None)

    def total(self) -> int:
        with self._lock:
            return sum(self._held.values())


class NoTurn(Exception):
    """No turn came within the wait."""


class TenantTurns:
    """At most `limit` holders per tenant at once; the others wait their turn, up to
    `wait_s`, in arrival order. For work whose waiting is free while its running is not:
    an upload that waits has not had its body read, so TCP holds its sender back."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def turn(self, tenant: str) -> AsyncIterator[None]:
        """Hold one of `tenant`'s turns; NoTurn when none came within `wait_s`."""
        turns = self._turns.setdefault(tenant, asyncio.Semaphore(self.limit))
        self._users[tenant] = self._users.get(tenant, 0) + 1
        try:
            try:
                async with asyncio.timeout(self.wait_s):
                    await turns.acquire()
            except TimeoutError:
                raise NoTurn() from None
            try:
                yield
            finally:
                turns.release()
        finally:
            self._users[tenant] -= 1
            if not self._users[tenant]:  # forget idle tenants: the map stays small
                del self._users[tenant], self._turns[tenant]
