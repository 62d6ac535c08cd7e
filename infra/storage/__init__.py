"""Artifact storage: uploads and job artifacts, local directory or S3-compatible bucket.

Keys are built from ids only: `models/<id>`, `datasets/<id>`, `jobs/<id>/<name>`.
"""

from infra.config import Settings
from infra.storage.base import ArtifactStore, KeyNotFound, StoreError, check_key
from infra.storage.local import LocalStore


def model_key(model_id: str) -> str:
    return f"models/{model_id}"


def dataset_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def artifact_key(job_id: str, name: str) -> str:
    return check_key(f"jobs/{job_id}/{name}")


def make_store(settings: Settings) -> ArtifactStore:
    """The store the settings describe: S3 when a bucket is set, else `data_dir/artifacts`."""
    if settings.s3_bucket:
        from infra.storage.s3 import S3Store  # boto3 is only imported when it is used

        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id or None,
            secret_access_key=settings.s3_secret_access_key or None,
            prefix=settings.s3_prefix,
        )
    return LocalStore(settings.data_dir / "artifacts")


__all__ = [
    "ArtifactStore",
    "KeyNotFound",
    "LocalStore",
    "StoreError",
    "artifact_key",
    "check_key",
    "dataset_key",
    "make_store",
    "model_key",
]
