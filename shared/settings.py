"""Settings for every service, read from the environment with the ``OMNI_`` prefix."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-agent-jwt-secret-change-me-0000"  # noqa: S105 - dev default, refused in prod
DEV_CHAT_SECRET = "dev-only-chat-session-secret-change-me-0"  # noqa: S105 - dev default, refused in prod


class Environment(StrEnum):
    DEV = "dev"
    TEST = "test"
    PROD = "prod"


class Settings(BaseSettings):
    """All configuration. Every field maps to ``OMNI_<FIELD_NAME>`` in upper case."""

    model_config = SettingsConfigDict(env_prefix="OMNI_", extra="ignore")

    environment: Environment = Field(
        Environment.DEV, description="dev, test or prod; prod refuses dev secrets."
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///.omni/dev.db",
        description="SQLAlchemy async URL (postgresql+asyncpg://… in distributed mode).",
    )
    kafka_bootstrap_servers: str | None = Field(
        None, description="Apache Kafka bootstrap servers; unset means the in-process bus."
    )
    kafka_client_id: str = Field("omniroute", description="Kafka client id prefix.")
    topic_partitions: int = Field(6, ge=1, description="Partitions for topics omniroute creates.")
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor for topics omniroute creates."
    )
    service_name: str = Field("omniroute", description="Name used in logs, metrics and `source`.")

    jwt_secret: SecretStr = Field(
        SecretStr(DEV_JWT_SECRET), description="HS256 key signing agent tokens."
    )
    jwt_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Rotation: JSON {"kid": "key", …}; tokens name their kid, all verify.',
    )
    jwt_active_kid: str | None = Field(None, description="The kid new tokens are signed with.")
    jwt_issuer: str = Field("omniroute", description="`iss` of agent tokens.")
    jwt_audience: str = Field("omniroute-agent-api", description="`aud` of agent tokens.")
    jwt_ttl_seconds: int = Field(8 * 3600, ge=60, description="Lifetime of issued agent tokens.")

    chat_session_secret: SecretStr = Field(
        SecretStr(DEV_CHAT_SECRET), description="HS256 key signing web-chat session tokens."
    )
    chat_session_ttl_seconds: int = Field(
        24 * 3600, ge=60, description="Lifetime of a web-chat session token."
    )
    max_request_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest accepted inbound request body."
    )
    max_message_chars: int = Field(4000, ge=1, description="Longest accepted chat message text.")

    ingest_host: str = Field("127.0.0.1", description="Bind address of ingest.")
    ingest_port: int = Field(8001, description="Port of ingest.")
    agent_api_host: str = Field("127.0.0.1", description="Bind address of agent_api.")
    agent_api_port: int = Field(8002, description="Port of agent_api.")
    router_host: str = Field(
        "127.0.0.1", description="Bind address of the router's health/metrics."
    )
    router_port: int = Field(8003, description="Port of the router's /metrics and health.")

    outbox_sweep_interval_seconds: float = Field(
        1.0, gt=0, description="How often leftover outbox rows are published."
    )
    outbox_sweep_min_age_seconds: float = Field(
        2.0, ge=0, description="Age after which an unpublished outbox row counts as left over."
    )
    cors_allow_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8002", "http://localhost:8002"],
        description="Origins browsers may call agent_api and the chat endpoints from.",
    )
    rate_limit_per_minute: int = Field(
        600, ge=1, description="Requests per minute per token (agent API) or chat session."
    )
    idempotency_ttl_seconds: int = Field(
        24 * 3600, ge=60, description="How long Idempotency-Key results are remembered."
    )
    router_group_id: str = Field(
        "omni-router", description="Kafka consumer group the routers share."
    )
    router_group_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a router group without committed offsets starts (auto.offset.reset).",
    )
    routing_tick_seconds: float = Field(
        1.0, gt=0, description="How often the router fires due timers and drains queues."
    )
    policy_cache_seconds: float = Field(
        1.0, ge=0, description="How long a routing policy is cached before re-reading it."
    )
    consumer_max_attempts: int = Field(
        3, ge=1, description="Attempts before a failing record goes to the dead-letter topic."
    )
    ws_heartbeat_seconds: float = Field(
        15.0, gt=0, description="Interval of heartbeat frames on agent WebSockets."
    )
    ws_pull_interval_seconds: float = Field(
        1.0, gt=0, description="Safety-net re-read of the event stream for live sockets."
    )
    ws_send_queue_size: int = Field(
        256, ge=1, description="Frames buffered per WebSocket before a slow client is dropped."
    )
    ws_send_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description=(
            "A WebSocket whose socket takes no frame for this long is closed with 4008; its "
            "close frame must reach it within the same time, or the connection is cut."
        ),
    )
    ws_send_buffer_bytes: int = Field(
        65536,
        ge=0,
        description=(
            "Kernel send buffer of each WebSocket (SO_SNDBUF; Linux doubles it): what a client "
            "that stops reading holds beyond its send queue. 0 leaves the OS autotuning."
        ),
    )
    shutdown_grace_seconds: int = Field(
        20, ge=1, description="Time in-flight requests get after SIGTERM before closing."
    )
    log_level: str = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="JSON logs (structlog); false for console output.")
    log_pii: bool = Field(
        False, description="Log emails, phone numbers and message bodies (off: redacted)."
    )

    # Channels ---------------------------------------------------------------------
    smtp_listen_host: str = Field("127.0.0.1", description="Bind address of the SMTP listener.")
    smtp_listen_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of ingest's SMTP listener; 0 turns it off (unset: 2525 in dev, else 0).",
    )
    smtp_server_name: str = Field(
        "omniroute", description="Host name the SMTP listener greets with."
    )
    smtp_relay_host: str | None = Field(
        None, description="SMTP relay outbound email is sent through; unset: email not sent."
    )
    smtp_relay_port: int = Field(587, ge=1, le=65535, description="Port of the SMTP relay.")
    smtp_relay_username: str | None = Field(None, description="SMTP relay user, if any.")
    smtp_relay_password: SecretStr | None = Field(None, description="SMTP relay password.")
    smtp_relay_starttls: bool | None = Field(
        None, description="STARTTLS to the relay: true, false, or unset (when offered)."
    )
    smtp_relay_tls: bool = Field(False, description="Implicit TLS to the relay (port 465).")
    email_max_message_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest accepted email (SMTP 552 above)."
    )
    email_max_attachments: int = Field(20, ge=0, description="Most attachments per email.")
    email_max_text_chars: int = Field(
        50_000, ge=100, le=100_000, description="Email text kept on the event (raw MIME is kept)."
    )
    email_subject_thread_days: float = Field(
        7.0, ge=0, description="Window of the same-sender, same-subject threading fallback."
    )
    attachment_store_dir: Path = Field(
        Path(".omni/attachments"), description="Directory attachment content is kept in."
    )
    webhook_signature_max_age_seconds: int = Field(
        900, ge=30, description="Age after which a signed webhook (e.g. Mailgun) is refused."
    )
    channel_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Configuration for installed channel adapters, JSON keyed by adapter "
        'name (e.g. {"signedwebhook": {"timeout_seconds": 5}}); each adapter gets its '
        "own object as runtime.options. Not for secrets: those are the accounts' secret_ref.",
    )
    channel_account_cache_seconds: float = Field(
        30.0, ge=0, description="How long ingest caches channel accounts."
    )
    channel_secrets_dir: PurePosixPath | None = Field(
        None,
        description="Absolute directory of per-workspace provider secret files, as ingest "
        "mounts it: an admin may give a channel account only secret_ref file:<name> of a "
        "file in <dir>/<workspace id>/. Set the same value on agent_api and ingest. Unset: "
        "the agent API accepts no secret_ref (operators may still set any in the table).",
    )
    outbound_consumer_group: str = Field(
        "omni-ingest-outbound",
        description="Consumer group that sends outbound email (and other provider channels).",
    )

    public_base_url: str | None = Field(
        None,
        description="ingest's public base URL as providers call it (e.g. https://ingest.acme."
        "example); Twilio signatures are checked against it and status callbacks use it.",
    )
    twilio_api_base_url: str = Field(
        "https://api.twilio.com", description="Twilio's REST API (a stand-in in tests)."
    )
    sms_send_max_attempts: int = Field(
        4, ge=1, description="Attempts to hand an SMS to Twilio (429/5xx/network) before DLQ."
    )
    sms_retry_backoff_seconds: float = Field(
        0.5, ge=0, description="First retry delay of SMS sends; doubles, with jitter."
    )
    meta_graph_base_url: str = Field(
        "https://graph.facebook.com",
        description="Meta's Graph API (Send API, WhatsApp messages; a stand-in in tests).",
    )
    meta_graph_api_version: str = Field("v21.0", description="Graph API version in send paths.")
    meta_send_max_attempts: int = Field(
        4, ge=1, description="Attempts to hand a reply to Meta (429/5xx/network) before DLQ."
    )
    meta_retry_backoff_seconds: float = Field(
        0.5, ge=0, description="First retry delay of Meta sends; doubles, with jitter."
    )
    send_ledger_retention_seconds: int = Field(
        7 * 24 * 3600,
        ge=3600,
        description="How long ingest remembers that a reply was handed to its provider, so "
        "a record read again (after a restart, a rebalance or a consumer-group reset) is "
        "not sent twice. Keep it at least omni.outbound.v1's retention.",
    )
    pending_receipt_retention_seconds: int = Field(
        2 * 24 * 3600,
        ge=60,
        description="How long a provider's delivery receipt that came before its reply's "
        '"sent" report waits for it before it is dropped (and logged).',
    )
    sms_media_max_bytes: int = Field(
        5 * 1024 * 1024,
        ge=1024,
        description="Largest MMS media item fetched from Twilio into the attachment store.",
    )
    media_consumer_group: str = Field(
        "omni-ingest-media",
        description="Consumer group that fetches provider-hosted media (Twilio MMS) after "
        "the webhook was answered.",
    )
    agent_api_public_url: str | None = Field(
        None,
        description="agent_api's public base URL as customers reach it (e.g. https://desk.acme."
        "example); CSAT survey links point at its /v1/surveys/… page. Unset: no survey links "
        "unless the workspace's CSAT settings name one.",
    )

    @property
    def effective_smtp_listen_port(self) -> int:
        if self.smtp_listen_port is not None:
            return self.smtp_listen_port
        return 2525 if self.environment is Environment.DEV else 0

    @field_validator("channel_secrets_dir")
    @classmethod
    def _absolute_secrets_dir(cls, value: PurePosixPath | None) -> PurePosixPath | None:
        if value is not None and not value.is_absolute():
            raise ValueError("OMNI_CHANNEL_SECRETS_DIR must be an absolute path")
        return value

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_prod(self) -> Self:
        if self.environment is Environment.PROD:
            for name, dev_value in (
                ("jwt_secret", DEV_JWT_SECRET),
                ("chat_session_secret", DEV_CHAT_SECRET),
            ):
                secret: SecretStr = getattr(self, name)
                value = secret.get_secret_value()
                if value == dev_value or len(value) < 32:
                    raise ValueError(
                        f"OMNI_{name.upper()} must be set to a secret of 32+ characters in prod"
                    )
        return self

    @property
    def uses_kafka(self) -> bool:
        return bool(self.kafka_bootstrap_servers)

    def sqlite_path(self) -> Path | None:
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :])
        return None

    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description=(
            "OTLP/HTTP collector base URL for traces (e.g. http://otel-collector:4318). "
            "Tracing is off unless this or OTEL_EXPORTER_OTLP_ENDPOINT is set."
        ),
    )
    otel_traces_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces sampled (incoming parents decide)."
    )

    # Outgoing webhooks (integrations) --------------------------------------------------
    webhook_consumer_group: str = Field(
        "omni-ingest-webhooks",
        description="Consumer group that turns events into webhook deliveries (in ingest).",
    )
    webhook_group_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a webhook group without committed offsets starts (auto.offset.reset).",
    )
    webhook_max_attempts: int = Field(
        10, ge=1, description="Attempts per webhook delivery before it is marked failed."
    )
    webhook_retry_base_seconds: float = Field(
        30.0, gt=0, description="First retry delay of a webhook delivery; doubles, with jitter."
    )
    webhook_retry_max_seconds: float = Field(
        6 * 3600.0, gt=0, description="Longest delay between two webhook attempts."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="Time a webhook receiver has to answer one attempt."
    )
    webhook_poll_interval_seconds: float = Field(
        1.0, gt=0, description="How often ingest looks for due webhook deliveries."
    )
    webhook_batch_size: int = Field(
        20, ge=1, description="Due webhook deliveries one ingest replica sends at once."
    )

    # Web chat: origins and per-session limits ------------------------------------------
    webchat_messages_per_minute: int | None = Field(
        None,
        ge=1,
        description="Messages a web-chat session may post per minute (a burst of as many, then "
        "one every 60/N s; 429 beyond). Unset: OMNI_RATE_LIMIT_PER_MINUTE.",
    )
    webchat_any_origin_when_unlisted: bool | None = Field(
        None,
        description="A workspace with no allowed web-chat origins accepts any site (true) or "
        "only ingest's own pages (false). Unset: true in dev, false otherwise.",
    )
    webchat_settings_cache_seconds: float = Field(
        10.0, ge=0, description="How long ingest caches a workspace's web-chat origins."
    )

    @property
    def effective_webchat_messages_per_minute(self) -> int:
        return self.webchat_messages_per_minute or self.rate_limit_per_minute

    @property
    def effective_webchat_any_origin_when_unlisted(self) -> bool:
        if self.webchat_any_origin_when_unlisted is not None:
            return self.webchat_any_origin_when_unlisted
        return self.environment is Environment.DEV


@lru_cache
def get_settings() -> Settings:
    return Settings()
