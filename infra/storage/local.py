"""Artifact store on a local directory: temp name + atomic rename for every write."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infra.storage.base import CHUNK_BYTES, KeyNotFound, StoreError, check_key


class LocalStore:
    """Objects are files under `root`, at the path named by their key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if move:
                try:
                    os.replace(src, tmp)  # same filesystem: no copy of a large upload
                except OSError:
                    shutil.copyfile(src, tmp)
                    Path(src).unlink(missing_ok=True)
            else:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def open_stream(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise KeyNotFound(key)
        return self._iter_file(path)

    @staticmethod
    def _iter_file(path: Path) -> Iterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def download_to(self, key: str, dest: Path) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise KeyNotFound(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise KeyNotFound(key)
        return path.stat().st_size

    def check(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise StoreError(f"artifact directory is not writable: {self.root}")
