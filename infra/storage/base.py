"""The artifact store interface shared by the local and S3 back-ends."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

CHUNK_BYTES = 1024 * 1024

# Keys are built from ids and fixed artifact names only (`models/mdl_…`,
# `jobs/job_…/model.onnx`); anything else is refused so a key can never escape the root.
_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


class StoreError(Exception):
    """The store could not complete an operation."""


class KeyNotFound(StoreError, KeyError):
    """No object is stored under the key."""


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise ValueError."""
    if len(key) > 512 or not _KEY_RE.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


@runtime_checkable
class ArtifactStore(Protocol):
    """Where uploads and job artifacts live. Writes are atomic: readers never see a partial
    object."""

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        """Store the file at `src` under `key` (moving it when `move` and cheap)."""
        ...

    def open_stream(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks; raises KeyNotFound."""
        ...

    def download_to(self, key: str, dest: Path) -> Path:
        """Copy the object to `dest` (atomically) and return `dest`; raises KeyNotFound."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Size in bytes; raises KeyNotFound."""
        ...

    def check(self) -> None:
        """Raise StoreError unless the store is reachable and writable."""
        ...
