"""Opaque random identifiers (`mdl_…`, `ds_…`, `job_…`).

Ids are random, never derived from client input, so they are safe to use in storage keys
and cannot be guessed from one another.
"""

import secrets

MODEL = "mdl"
DATASET = "ds"
JOB = "job"

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """A fresh id such as `job_3k9x…`: 20 base-36 characters, about 103 bits of randomness."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(20))
