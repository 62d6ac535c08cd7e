"""Artifact store on an S3-compatible bucket (AWS, MinIO, …) through boto3."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from infra.storage.base import CHUNK_BYTES, KeyNotFound, StoreError, check_key

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3Store:
    """Objects live in `bucket` under `prefix`. S3 writes are atomic per object already."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            # Short timeouts so a dead endpoint fails /readyz quickly instead of hanging.
            config=Config(connect_timeout=3, read_timeout=60, retries={"max_attempts": 3}),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"upload of {key} failed: {exc}") from exc
        if move:
            Path(src).unlink(missing_ok=True)

    def open_stream(self, key: str) -> Iterator[bytes]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise KeyNotFound(key) from exc
            raise StoreError(str(exc)) from exc
        return self._iter_body(obj["Body"])

    @staticmethod
    def _iter_body(body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def download_to(self, key: str, dest: Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            os.replace(tmp, dest)
        except ClientError as exc:
            tmp.unlink(missing_ok=True)
            if _is_missing(exc):
                raise KeyNotFound(key) from exc
            raise StoreError(str(exc)) from exc
        return dest

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if not _is_missing(exc):
                raise StoreError(str(exc)) from exc

    def _head(self, key: str) -> dict[str, Any]:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ClientError as exc:
            if _is_missing(exc):
                raise KeyNotFound(key) from exc
            raise StoreError(str(exc)) from exc

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except KeyNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"bucket {self.bucket!r} is not reachable: {exc}") from exc
