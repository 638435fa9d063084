"""All configuration: environment variables with the CHURN_ prefix, CLI flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Worker settings. Every field is documented in README ("Settings")."""

    model_config = SettingsConfigDict(env_prefix="CHURN_", extra="ignore")

    broker: str = Field(
        default="kafka://localhost:9092",
        description="Kafka bootstrap servers, comma separated, each kafka://host:port.",
    )
    app_id: str = Field(
        default="churn-stream",
        description="Consumer group and faust app id; prefixes the internal topics.",
    )
    input_topic: str = Field(default="customer-events", description="Lifecycle events (input).")
    output_topic: str = Field(default="churn-metrics", description="Metric records (output).")
    dlq_topic: str = Field(default="customer-events-dlq", description="Dead-lettered input.")
    alert_topic: str = Field(
        default="churn-alerts", description="Churn spike alerts (firing and resolved records)."
    )
    dimensions: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma list of attribute names that become segment dimensions.",
    )
    inactivity_days: int | None = Field(
        default=None,
        gt=0,
        description="Unset: subscription mode. Set to D: activity mode, inactive after D days.",
    )
    grace_seconds: int = Field(
        default=3600, ge=0, description="A window is final once the watermark passes end+grace."
    )
    emit_interval_seconds: float = Field(
        default=0.5, gt=0, description="Open windows are re-emitted at most this often."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    metrics_port: int = Field(default=6066, ge=0, le=65535, description="Port of /metrics.")
    store: Literal["memory://", "rocksdb://"] = Field(
        default="memory://", description="faust table store: memory:// or rocksdb://."
    )
    data_dir: Path = Field(default=Path("data"), description="faust data dir (RocksDB files).")
    rocksdb_memory_mb: int = Field(
        default=128,
        ge=8,
        description="With rocksdb://: one block cache of this many MiB for every RocksDB "
        "database of the worker, the memtables charged to it (whatever the partitions held).",
    )
    heap_trim_interval_seconds: float = Field(
        default=15,
        ge=0,
        description="How often the worker hands the free pages inside its C heap back to the "
        "system (glibc's malloc_trim); 0: never.",
    )
    partitions: int = Field(
        default=4, ge=1, description="Partitions of the internal topics (= input partitions)."
    )
    max_segments: int = Field(
        default=50, ge=1, description="Segment values kept per dimension; the rest is 'other'."
    )
    max_future_seconds: int = Field(
        default=86_400,
        ge=0,
        description="Events dated further than this past the wall clock are dead-lettered.",
    )
    batch_max_records: int = Field(
        default=20_000, ge=1, description="Most input records the ingest stage reads per batch."
    )
    batch_linger_ms: int = Field(
        default=400,
        ge=0,
        le=10_000,
        description="How long the ingest stage keeps reading to fill a batch once input "
        "arrives, counted from when the previous batch was taken (every batch costs a few "
        "broker round trips downstream).",
    )
    customer_batch_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        description="The customer stage applies the queued customer-batch messages of a "
        "partition together, up to this many bytes of them (more: fewer histories read and "
        "recomputed per event on a backlog, but more events held).",
    )
    customer_batch_max_customers: int = Field(
        default=16_384,
        ge=1,
        description="The most distinct customers in one such batch: each is read, "
        "recomputed and written once per batch, and held in memory until then.",
    )
    customer_backlog_hold_ms: int = Field(
        default=2500,
        ge=0,
        le=60_000,
        description="While the ingest stage is more than one batch (batch_max_records) "
        "behind its input, the customer stage waits up to this long after applying what it "
        "took, so that more queues up for its next batch: each customer is then read, "
        "recomputed and written once for more of its events. 0: never wait.",
    )
    session_timeout_seconds: int = Field(
        default=10, ge=3, description="Kafka group session timeout (failover time after a crash)."
    )
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="Static group membership (Kafka's group.instance.id): a stable name per "
        "worker, such as its pod's. A worker restarted under the same name gets its "
        "partitions back without waiting for its old session to expire; one that stops "
        "keeps them until its session expires. The ingest stage's consumer uses "
        "<name>-ingest. Unset: dynamic membership.",
    )
    standby_replicas: int = Field(
        default=0,
        ge=0,
        description="Warm copies of each table partition kept by other workers (faust's "
        "table_standby_replicas). Each copy replays every history write of the partition "
        "through faust's per-message path; without one, a failover restores the partition "
        "from its changelog (in bulk with RocksDB).",
    )
    producer_max_batch_size: int = Field(
        default=16384,
        ge=1,
        description="Bytes per producer batch of the faust producer (changelogs, deltas, "
        "output); 1 = one record per batch (~5,000 records/s; recovery does not need it).",
    )
    retention_days: int | None = Field(
        default=None,
        gt=0,
        description="Retention horizon: events older than this many days behind the "
        "watermark are counted, not applied, and per-customer history older than the "
        "horizon plus the longest window (367 days) is folded into a snapshot. Unset: "
        "keep everything.",
    )
    startup_timeout_seconds: float = Field(
        default=300, gt=0, description="Give up (exit non-zero) if Kafka is unreachable this long."
    )
    stop_timeout_seconds: float = Field(
        default=20,
        gt=0,
        description="A stop (on a signal or after a crash) taking longer than this ends the "
        "worker with exit code 1; keep it below the orchestrator's grace period (30 s in "
        "deploy/).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism; unset for no SASL."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (secret).")
    ssl: bool = Field(
        default=False, description="TLS to the brokers (system CAs unless CHURN_SSL_CAFILE)."
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle; set to enable TLS.")
    ssl_certfile: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS; enables TLS."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of the client certificate."
    )
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of the private key (secret)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the worker."
    )

    @field_validator("dimensions", mode="before")
    @classmethod
    def _split_dimensions(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("dimensions")
    @classmethod
    def _reserved_dimensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "all" in value:
            raise ValueError("'all' is reserved for the dimension that covers every customer")
        if len(set(value)) != len(value):
            raise ValueError("dimensions must be distinct")
        return value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError("CHURN_SASL_MECHANISM needs CHURN_SASL_USERNAME and _PASSWORD")
        return self

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> Settings:
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("CHURN_SSL_KEYFILE needs CHURN_SSL_CERTFILE")
        return self

    @property
    def tls(self) -> bool:
        """True when any TLS setting is given."""
        return self.ssl or self.ssl_cafile is not None or self.ssl_certfile is not None

    @property
    def bootstrap_servers(self) -> str:
        """host:port list for aiokafka (without the kafka:// scheme)."""
        return ",".join(
            server.strip().removeprefix("kafka://") for server in self.broker.split(",")
        )

    @property
    def customer_topic(self) -> str:
        return f"{self.app_id}-customer-batches"

    @property
    def delta_topic(self) -> str:
        return f"{self.app_id}-segment-deltas"
