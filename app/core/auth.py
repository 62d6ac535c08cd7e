"""API keys: stored as SHA-256 hashes, each belonging to one tenant.

Keys arrive two ways: `SECATEURS_API_KEYS` at start-up (`sync_settings_keys`) and
`secateurs keys create` (`create_api_key`). Both end up as rows of `api_keys`, so a
request is authenticated by one indexed lookup of the key's hash.
"""

import hashlib
import secrets
import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.db.models import ApiKey

KEY_PREFIX = "sk_"


def hash_key(key: str) -> str:
    """SHA-256 hex of a key. Keys are long random strings, so a plain hash is enough."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(session: Session, tenant: str, label: str | None = None) -> str:
    """Create a key for `tenant`, store its hash and return the key (shown once)."""
    if not tenant or len(tenant) > 128:
        raise ValueError("tenant must be 1 to 128 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), label=label))
    session.flush()
    return key


def sync_settings_keys(session: Session, keys: dict[str, str]) -> None:
    """Insert the configured `key -> tenant` pairs that are not stored yet (idempotent)."""
    for key, tenant in keys.items():
        digest = hash_key(key)
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None:
            session.add(ApiKey(tenant=tenant, key_hash=digest, label="settings"))
        elif row.tenant != tenant:
            # The environment is authoritative for the keys it names.
            row.tenant = tenant
    session.flush()


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant owning `key`, or None when the key is unknown."""
    if not key:
        return None
    return session.scalar(select(ApiKey.tenant).where(ApiKey.key_hash == hash_key(key)))


class KeyCache:
    """Recently validated keys (by hash) -> tenant, for `ttl_s` seconds.

    Authentication runs on every request; with the cache a busy client costs one database
    lookup per `ttl_s` instead of one per request, and keeps working while the database is
    busy. Only valid keys are cached, so the cache holds at most one entry per key."""

    def __init__(self, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        digest = hash_key(key)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._entries[digest]
                return None
            return entry[0]

    def put(self, key: str, tenant: str) -> None:
        with self._lock:
            self._entries[hash_key(key)] = (tenant, self._clock() + self.ttl_s)
