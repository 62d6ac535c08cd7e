"""Process settings, read once at start-up from the environment (prefix SECATEURS_).

The API process and the worker both build one `Settings` and pass it down; nothing else
reads the environment.
"""

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SECATEURS_", extra="ignore")

    data_dir: Path = Path("./data")
    # Empty = SQLite file in data_dir. e.g. postgresql+psycopg://postgres@127.0.0.1/secateurs
    database_url: str = ""
    # Empty = embedded broker (Kombu's SQLAlchemy transport on a SQLite file in data_dir).
    broker_url: str = ""

    # Artifact store: local directory under data_dir unless s3_bucket is set.
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_prefix: str = ""

    # "tenant1:key1,tenant2:key2"
    api_keys: str = ""

    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("HOST", "SECATEURS_HOST"))
    port: int = Field(default=8000, validation_alias=AliasChoices("PORT", "SECATEURS_PORT"))

    max_model_bytes: int = 2 * GiB
    max_dataset_bytes: int = 4 * GiB
    rate_limit_per_minute: int = 600
    max_concurrent_jobs_per_tenant: int = 16
    # An upload that sends nothing for this long is dropped with 408 (slow clients).
    upload_idle_timeout_s: float = 60.0

    # Job execution
    job_soft_time_limit_s: int = 6 * 3600
    job_hard_time_limit_s: int = 6 * 3600 + 300
    max_attempts: int = 3
    # Seconds the model inspector child may run, and its address-space cap.
    inspect_timeout_s: int = 300
    inspect_memory_bytes: int = 16 * GiB

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'secateurs.db').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    def parsed_api_keys(self) -> dict[str, str]:
        """key -> tenant, from SECATEURS_API_KEYS."""
        pairs: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.api_keys.split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("SECATEURS_API_KEYS must look like 'tenant1:key1,tenant2:key2'")
            pairs[key] = tenant
        return pairs
