"""API keys: stored as SHA-256 hashes, each belonging to one tenant.

Keys arrive two ways: `SECATEURS_API_KEYS` at start-up (`sync_settings_keys`) and
`secateurs keys create` (`create_api_key`). Both end up as rows of `api_keys`, so a
request is authenticated by one indexed lookup of the key's hash.
"""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey

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
