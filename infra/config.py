"""Process settings, read once at start-up from the environment (prefix SECATEURS_).

The API process and the worker both build one `Settings` and pass it down; nothing else
reads the environment.
"""

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

KiB = 1024
MiB = 1024**2
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
    # After its first upload_idle_timeout_s, an upload arriving slower than this on average
    # is dropped with 408: a byte a second would otherwise hold a connection for weeks.
    upload_min_bytes_per_s: int = 16 * KiB
    # Seconds a client may take to send a request's headers (from its first byte, or from
    # the connection's start); past it the connection gets 408 and is closed.
    header_timeout_s: float = 20.0
    # Seconds a client may take to send a (small, JSON) request body, all of it.
    body_timeout_s: float = 30.0

    # Fairness between tenants. Open `GET /v1/jobs/{id}/events` streams per tenant (per
    # API process); more answer 429 `too_many_streams`.
    max_event_streams_per_tenant: int = 8
    # Uploads of one tenant received and inspected at once; the others wait (bodies unread)
    # up to upload_turn_wait_s, then get 429 too_many_uploads.
    max_uploads_per_tenant: int = Field(default=4, ge=1)
    upload_turn_wait_s: float = Field(default=300.0, gt=0)
    # Bytes of live models and datasets a tenant may keep; 0 = unlimited.
    tenant_storage_quota_bytes: int = 20 * GiB
    # Days after a job finishes before the worker's sweeper removes its artifact files (the
    # job and its artifact list stay; downloads answer 410 artifacts_expired); 0 = never.
    artifact_retention_days: float = Field(default=0.0, ge=0)
    # Below this much free space on the data disk, /readyz answers 503 and uploads and job
    # submissions 507, before the disk is so full that SQLite or a write fails half-way.
    min_free_disk_bytes: int = 256 * MiB
    # Failed authentications per client address per minute before that address gets 429
    # (only keys it has not already proven valid); 0 = no throttle.
    auth_failures_per_minute: int = 20
    # Seconds a validated key is trusted without a database lookup. A key deleted from
    # the database keeps working for up to this long; 0 = look up on every request.
    key_cache_ttl_s: float = Field(default=30.0, ge=0)
    # Bearer key for GET /metrics (operators, never a tenant). Empty = loopback clients only.
    metrics_key: str = ""

    # Job execution
    job_soft_time_limit_s: int = 6 * 3600
    job_hard_time_limit_s: int = 6 * 3600 + 300
    max_attempts: int = 3
    # Seconds an upload's inspector child may run.
    inspect_timeout_s: int = 300
    # Inspector children running at once, and at most this many for one tenant; further
    # uploads wait (at most inspect_max_waiting of one tenant; beyond that, 429).
    inspect_concurrency: int = 2
    inspect_per_tenant: int = 1
    inspect_max_waiting: int = 8
    # Private memory of all inspector children together (each gets its share).
    inspect_memory_total_bytes: int = 4 * GiB
    # Private memory of a job's sandboxed engine process.
    job_memory_bytes: int = 16 * GiB
    # Nice value of a job's engine process (0 = the worker's own priority): where the API
    # shares the machine, the polls it answers keep their CPU while a job runs.
    job_niceness: int = Field(default=10, ge=0, le=19)

    # Untrusted models are parsed, converted and pruned in a bubblewrap sandbox as this
    # unprivileged user (when the service runs as root). Where the sandbox cannot be set
    # up, uploads and jobs are refused, unless this insecure flag is set (logged loudly).
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    insecure_no_sandbox: bool = False

    # Webhooks (a job's webhook_url). Failed deliveries are retried after base, 2 x base,
    # 4 x base... seconds, each wait at most max; with the defaults the last try comes
    # about a day after the first (5 s doubling to an hour, 32 tries).
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    webhook_retry_max_s: float = Field(default=3600.0, gt=0)
    webhook_max_attempts: int = Field(default=32, ge=1, le=1000)
    # Seconds to connect, and to wait for each read of the answer, per attempt.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # How often the worker looks for deliveries that are due (the latency after a job ends).
    webhook_poll_s: float = Field(default=0.5, gt=0)
    # Deliveries sent at once by one worker.
    webhook_concurrency: int = Field(default=4, ge=1, le=64)
    # Allow webhook URLs on loopback, private, link-local and other non-public addresses
    # (refused by default: they would let a tenant reach the service's own network).
    webhook_allow_private: bool = False

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
