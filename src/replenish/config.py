"""Settings, read once from ``REPLENISH_*`` environment variables (and an optional ``.env`` file)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from replenish.constants import DEAD_LETTERS_PER_DEVICE_HOUR, DEFAULT_REORDER_MARGIN_DAYS

DEFAULT_DATA_DIR = Path("var")
EMBEDDED_BROKER_HOST = "127.0.0.1"
EMBEDDED_BROKER_PORT = 1883
# The platform's own MQTT clients (ingestor, command publisher) sign in to the broker as this user.
SERVICE_USERNAME = "replenish"
# ...with client ids that start with this, which no device id may (a device's client id is its device id).
SERVICE_CLIENT_ID_PREFIX = "replenish"


@dataclass(frozen=True)
class MqttEndpoint:
    """Where an MQTT client connects, parsed from ``mqtt://[user[:password]@]host[:port]``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> MqttEndpoint:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"MQTT URL must start with mqtt:// (got {url!r}); TLS is not supported yet")
        if not parts.hostname:
            raise ValueError(f"MQTT URL has no host: {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


class Settings(BaseSettings):
    """Every knob of the platform. Environment variables win over ``.env``; names are upper-case."""

    model_config = SettingsConfigDict(env_prefix="REPLENISH_", env_file=".env", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where the SQLite database and demo files live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite under data_dir. PostgreSQL: postgresql+psycopg://..."
    )
    mqtt_url: str | None = Field(
        None,
        description="External broker, mqtt://host:port (the platform listener on Mosquitto; the platform signs in as "
        "'replenish' with REPLENISH_BROKER_SERVICE_PASSWORD unless the URL carries user:pass@). Unset: `replenish up` "
        "runs the embedded broker.",
    )
    broker_host: str = Field(EMBEDDED_BROKER_HOST, description="Bind address of the embedded broker.")
    broker_port: int = Field(EMBEDDED_BROKER_PORT, ge=0, le=65535, description="Port of the embedded broker.")
    broker_service_password: SecretStr | None = Field(
        None,
        description="Password of the platform's own MQTT clients (user 'replenish') on the embedded broker or "
        "Mosquitto's platform listener (`replenish mosquitto-files` writes its hash). Unset with the embedded broker, "
        "`replenish up` makes one up for its run; roles in separate processes must share one.",
    )
    broker_credentials_check_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the embedded broker disconnects devices whose secret was rotated, or that were "
        "deleted, since they signed in.",
    )
    mqtt_client_id: str = Field(
        "replenish-ingest",
        pattern=f"^{SERVICE_CLIENT_ID_PREFIX}",
        description="Client id of the ingestor's MQTT session; must start with 'replenish', which no device id may.",
    )
    api_host: str = Field("127.0.0.1", description="Bind address of the HTTP API.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port of the HTTP API.")
    evaluation_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the automation job evaluates the slots that are due: those with new readings, whose "
        "order moment has come, or whose consent, orders or settings changed.",
    )
    evaluation_batch_size: int = Field(
        200,
        ge=1,
        le=10_000,
        description="How many due slots an evaluator claims at once. On PostgreSQL every scheduler process "
        "evaluates, each claiming its own batches.",
    )
    evaluation_claim_seconds: float = Field(
        120.0,
        ge=5,
        description="How long an evaluator's claim on a batch of due slots lasts: the slots of an evaluator that "
        "died mid-batch are taken by another one after this long. A batch's transactions commit about every half "
        "second, so a claim far outlasts them.",
    )
    dispatch_interval_seconds: float = Field(
        1.0, gt=0, description="How often the outbox dispatcher delivers orders, notifications and commands."
    )
    outbox_retry_base_seconds: float = Field(
        1.0,
        gt=0,
        description="A failed delivery (order, notification, command) is retried after twice this, then each time "
        "twice as long, up to 10 minutes.",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a fulfilment or notification webhook may take to answer before it is retried."
    )
    outbox_claim_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a dispatcher holds a message it is delivering. A dispatcher that died mid-delivery "
        "holds it this long before another takes it over. Keep it well above the webhook timeout: that timeout "
        "bounds each phase of a request (connect, send, each read) rather than the whole, and dispatchers on "
        "other hosts compare it with their own clocks, so a delivery that outlasts the lease could be sent again, "
        "under the same Idempotency-Key.",
    )
    reorder_margin_days: float = Field(
        DEFAULT_REORDER_MARGIN_DAYS,
        ge=0,
        description="Safety margin added to a slot's lead time before it must be reordered.",
    )
    minimum_basket: Decimal | None = Field(
        None,
        gt=0,
        max_digits=12,
        decimal_places=2,
        description="A minimum basket value or free-shipping threshold, in the catalogue's currency: a shipment "
        "below it takes the customer's next-due slots too (soonest first, within 60 days) until it reaches it, and "
        "failing that its hand-off waits as long as the forecasts allow (until its first line's early empty date "
        "less its lead time) for other lines to join. Unset: shipments leave as they are.",
    )
    order_webhook_url: HttpUrl | None = Field(
        None, description="Fulfilment webhook: orders are POSTed here. Unset: orders are recorded and logged."
    )
    fulfilment_partner_secrets: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="Fulfilment partners that report progress to POST /api/v1/fulfilment/{partner}/events, each with "
        "the secret its HMAC-SHA256 signatures use, comma-separated: 'acme:s3cret,other:an0ther'. Empty: only the "
        "operator-token route takes fulfilment updates.",
    )
    fulfilment_signature_tolerance_seconds: float = Field(
        300.0, gt=0, description="How far a signed fulfilment request's timestamp may be from now (replay window)."
    )
    ingest_batch_size: int = Field(500, ge=1, description="Most messages the ingestor commits in one batch.")
    # NoDecode: a comma-separated list in the environment, not JSON.
    ingest_lanes: Annotated[tuple[Literal["events", "telemetry"], ...], NoDecode] = Field(
        ("events", "telemetry"),
        min_length=1,
        description="Which lanes this ingest process runs, comma-separated: events (falls, help requests: few and "
        "urgent) and telemetry (telemetry and status). Production runs each in a process of its own, so that a fall "
        "never competes with a telemetry backlog for the same interpreter.",
    )
    ingest_share_group: str | None = Field(
        None,
        pattern=r"^[^/+#\s]+$",
        description="MQTT 5 shared subscription group of the ingest processes: each subscribes to "
        "$share/GROUP/devices/+/telemetry (and the other device topics) and the broker hands each message to one of "
        "them. Each process takes the lowest free member number n and connects as REPLENISH_MQTT_CLIENT_ID-n. Needs an "
        "external broker (REPLENISH_MQTT_URL): the embedded one has no shared subscriptions. Unset: plain "
        "subscriptions, one ingest process per lane.",
    )
    dead_letters_per_device_hour: int = Field(
        DEAD_LETTERS_PER_DEVICE_HOUR,
        ge=1,
        description="Most dead letters kept per device and hour (all unregistered senders share one such allowance); "
        "beyond, refused messages are only counted (GET /api/v1/dead-letters/overflow), so that a flood cannot fill "
        "the database.",
    )
    ingest_batch_wait_ms: float = Field(
        20.0,
        ge=0,
        description="Longest an idle ingestor waits for a second message to share a commit; under load the backlog "
        "that built up meanwhile is committed at once.",
    )
    insights_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="How often the fleet's usage norms are refreshed and due monthly digests sent (insights).",
    )
    retention_interval_seconds: float = Field(
        3600.0, gt=0, description="How often telemetry older than each customer's consented retention is deleted."
    )
    session_hours: float = Field(
        12.0, gt=0, description="How long a token from signing in works (personal API tokens set their own)."
    )
    web_live_seconds: float = Field(
        10.0, gt=0, description="How often the web app's pages check for new orders awaiting approval and alerts."
    )
    escalation_interval_seconds: float = Field(
        1.0, gt=0, description="How often open safety incidents are checked for their next escalation step."
    )
    health_interval_seconds: float = Field(
        30.0, gt=0, description="How often every device's health (offline, battery, stuck sensor) is judged."
    )
    public_url: HttpUrl | None = Field(
        None,
        description="The API's address as people outside reach it (acknowledgement links in notifications). Unset: "
        "http://API_HOST:API_PORT.",
    )
    smtp_host: str | None = Field(None, description="SMTP server for e-mail notifications. Unset: e-mail is not sent.")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP server port.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_username: str | None = Field(None, description="SMTP user, if the server wants a login.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_sender: str = Field("Replenish <replenish@localhost>", description="From: of e-mail notifications.")
    sms_provider: Literal["twilio"] | None = Field(
        None,
        description="Who sends emergency contacts' SMS and places their voice calls: twilio (or a provider with "
        "Twilio's API, through SMS_API_URL). Unset: the sms and voice channels fail at once, and escalation falls "
        "back to each contact's next channel.",
    )
    sms_account_sid: str | None = Field(None, description="The provider's account id (Twilio: the Account SID).")
    sms_auth_token: SecretStr | None = Field(
        None, description="The provider's auth token: signs its delivery receipts too (X-Twilio-Signature)."
    )
    sms_from: str | None = Field(None, description="The number texts and calls come from, in E.164 (+15005550006).")
    sms_api_url: HttpUrl = Field(
        HttpUrl("https://api.twilio.com"), description="The provider's API base URL (tests point it at a fake)."
    )
    sms_receipt_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="An emergency contact's SMS or call without a delivery receipt after this long counts as failed: "
        "their next channel is tried at once.",
    )
    monitoring_centre_url: HttpUrl | None = Field(
        None,
        description="The monitoring centre that calls emergency services for a wearer who consented, when no contact "
        "acknowledged: a signed JSON POST of the incident (docs/api.md, 'Monitoring centre'), which the centre "
        "acknowledges. Unset, or failing: the request goes to the operators' log, where the on-call operator calls.",
    )
    monitoring_centre_secret: SecretStr | None = Field(
        None, description="Signs what the monitoring centre is sent (X-Replenish-Signature, as fulfilment's)."
    )
    webpush_vapid_private_key: SecretStr | None = Field(
        None,
        description="The platform's VAPID private key for Web Push (the same in every process: browsers subscribe "
        "to its public key): one line of base64url as `replenish vapid-key` prints it, or PEM. Unset: a key made on "
        "first use and kept in DATA_DIR/vapid-private.pem, which suits one process (replenish up).",
    )
    webpush_vapid_subject: str = Field(
        "mailto:replenish@localhost",
        pattern=r"^(mailto:|https://)",
        description="Who push services contact about this platform's messages (VAPID 'sub'): mailto: or https://.",
    )
    log_notification_links: bool = Field(
        False,
        description="Write the one-tap links (approve, decline, cancel) of notifications on the log channel into the "
        "log. Off: the log says they were left out, as whoever reads the log could use them. `replenish up --demo` "
        "turns it on, so that the demo's requests can be answered from the log.",
    )
    demo_catch_up_seconds: float = Field(
        25.0,
        gt=0,
        le=3600,
        description="`replenish up --demo`: within how many seconds the demo devices replay their weeks of history "
        "before they run in real time (the first evaluation comes then), and the wearable falls a little before "
        "that (four fifths of it).",
    )
    webhook_allow_private_networks: bool = Field(
        False,
        description="Let notification webhooks (URLs customers give) reach private, loopback and link-local "
        "addresses. Off: such a URL is refused, so that nobody can aim the platform at its own network.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one readable line per record; json: one JSON object per line (timestamp, level, logger, "
        "message, correlation_id), for a log collector.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics endpoint of a process without the API (ingest, scheduler); 0: "
        "none. The API serves its metrics at /metrics on its own port.",
    )
    metrics_host: str = Field("127.0.0.1", description="Bind address of the metrics endpoint (REPLENISH_METRICS_PORT).")

    @field_validator("ingest_share_group", mode="before")
    @classmethod
    def _empty_group_is_none(cls, value: object) -> object:
        # REPLENISH_INGEST_SHARE_GROUP= (empty) turns it off, e.g. for a `docker compose run` of a service that sets it.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("fulfilment_partner_secrets", mode="before")
    @classmethod
    def _partners_from_a_list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        partners = {}
        for entry in filter(None, (part.strip() for part in value.split(","))):
            name, separator, secret = entry.partition(":")
            if not separator or not name.strip() or len(secret.strip()) < 16:
                raise ValueError("each fulfilment partner is 'name:secret' with a secret of at least 16 characters")
            partners[name.strip()] = secret.strip()
        return partners

    @field_validator("ingest_lanes", mode="before")
    @classmethod
    def _lanes_from_a_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _shared_subscriptions_need_an_external_broker(self) -> Settings:
        if self.ingest_share_group and self.mqtt_url is None:
            raise ValueError(
                "ingest_share_group needs an external broker (REPLENISH_MQTT_URL): the embedded amqtt broker speaks "
                "MQTT 3.1.1 only and takes $share/... as a plain topic filter that no device message matches"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_delivery(self) -> Settings:
        if self.outbox_claim_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                "outbox_claim_lease_seconds must be longer than webhook_timeout_seconds: a delivery still under way "
                "would be taken over and sent twice"
            )
        return self

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url_parses(cls, value: str | None) -> str | None:
        if value:
            MqttEndpoint.parse(value)
        return value or None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'replenish.db'}"

    @property
    def resolved_public_url(self) -> str:
        return str(self.public_url).rstrip("/") if self.public_url else f"http://{self.api_host}:{self.api_port}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.mqtt_url is None

    @property
    def mqtt_endpoint(self) -> MqttEndpoint:
        if self.mqtt_url:
            endpoint = MqttEndpoint.parse(self.mqtt_url)
            if endpoint.username is None and self.broker_service_password is not None:
                secret = self.broker_service_password.get_secret_value()
                endpoint = replace(endpoint, username=SERVICE_USERNAME, password=secret)
            return endpoint
        password = self.broker_service_password.get_secret_value() if self.broker_service_password else None
        return MqttEndpoint(host=self.broker_host, port=self.broker_port, username=SERVICE_USERNAME, password=password)
