"""Assembles the platform's parts for each process role; `replenish up` runs them all in one process."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlsplit

import httpx
from apscheduler.schedulers.background import BackgroundScheduler
from py_vapid import Vapid02
from pydantic import SecretStr
from sqlalchemy import Engine

from replenish.auth import service as auth
from replenish.clock import Clock, SystemClock
from replenish.cluster.leader import LeaderElection
from replenish.cluster.locks import AdvisoryLock, AlwaysHeld, HeldLock, is_postgres
from replenish.cluster.membership import MembershipWatch, claim_member
from replenish.config import Settings
from replenish.constants import LOCK_CHECK_SECONDS, SCHEDULER_LEADER_LOCK_KEY, OutboxKind
from replenish.db import make_engine, transaction
from replenish.ingest.consumer import MqttIngestor, lane_client_ids
from replenish.mqtt.broker import EmbeddedBroker
from replenish.mqtt.client import CommandHandler, CommandPublisher
from replenish.mqtt.probe import BrokerProbe
from replenish.notifications import service as push
from replenish.notifications.channels import Channels, SmtpSettings, UndeliverableAddress, refuse_private_destinations
from replenish.notifications.delivery import NotificationHandler
from replenish.notifications.push import KEY_FILE_NAME, WebPushSender, application_server_key, load_vapid
from replenish.notifications.telephony import TelephonyProvider, TwilioProvider
from replenish.observability.database import DatabaseCollector
from replenish.observability.metrics import Metrics, MetricsServer
from replenish.orders.fulfilment import fulfilment_handlers, make_sink
from replenish.outbox.dispatcher import Dispatcher, DispatchLoop, OutboxHandler
from replenish.scheduler import Jobs, make_scheduler
from replenish.schema import create_schema
from replenish.tls import client_tls

if TYPE_CHECKING:
    import uvicorn

# A process-wide identity for MQTT clients that keep no session (the command publisher): unique, so that two
# scheduler processes never take each other's connection at the broker.
PROCESS_TAG = f"{os.getpid()}-{secrets.token_hex(3)}"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roles:
    broker: bool = False
    ingest: bool = False
    scheduler: bool = False
    api: bool = False

    @property
    def uses_database(self) -> bool:
        return self.ingest or self.scheduler or self.api

    @property
    def names(self) -> str:
        """What the process runs, e.g. "ingest" or "broker,ingest,scheduler,api": the role label of its metrics."""
        return ",".join(name for name in ("broker", "ingest", "scheduler", "api") if getattr(self, name))

    @classmethod
    def all_in_one(cls, settings: Settings) -> Roles:
        return cls(broker=settings.uses_embedded_broker, ingest=True, scheduler=True, api=True)


def vapid_key(settings: Settings) -> Vapid02:
    """The platform's Web Push identity (notifications.push.load_vapid)."""
    key = settings.webpush_vapid_private_key
    return load_vapid(configured=key.get_secret_value() if key else None, key_file=settings.data_dir / KEY_FILE_NAME)


def provider_status_url(settings: Settings) -> str:
    """Where the telephony provider posts its delivery receipts (notifications.router's providers_router)."""
    return f"{settings.resolved_public_url.rstrip('/')}/api/v1/providers/{settings.sms_provider or 'none'}/status"


def make_telephony(settings: Settings) -> TelephonyProvider | None:
    """The SMS and voice provider the settings name, if one."""
    if settings.sms_provider != "twilio":
        return None
    if not (settings.sms_account_sid and settings.sms_auth_token and settings.sms_from):
        raise ValueError("REPLENISH_SMS_PROVIDER=twilio needs REPLENISH_SMS_ACCOUNT_SID, _AUTH_TOKEN and _FROM")
    return TwilioProvider(
        account_sid=settings.sms_account_sid,
        auth_token=settings.sms_auth_token.get_secret_value(),
        sender=settings.sms_from,
        client=httpx.Client(timeout=settings.webhook_timeout_seconds, verify=client_tls()),
        api_url=str(settings.sms_api_url),
    )


def make_channels(settings: Settings, engine: Engine) -> Channels:
    smtp = None
    if settings.smtp_host:
        smtp = SmtpSettings(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_sender,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
        )

    def check_endpoint(url: str) -> None:
        if not settings.webhook_allow_private_networks:
            if urlsplit(url).scheme != "https":
                raise UndeliverableAddress(f"a push endpoint must be https: {url!r}")
            refuse_private_destinations(url)

    def forget(endpoint: str) -> None:
        with transaction(engine) as session:
            push.forget_subscription(session=session, endpoint=endpoint)

    return Channels(
        telephony=make_telephony(settings),
        monitoring_centre_url=str(settings.monitoring_centre_url) if settings.monitoring_centre_url else None,
        monitoring_centre_secret=settings.monitoring_centre_secret.get_secret_value()
        if settings.monitoring_centre_secret
        else None,
        status_callback=provider_status_url(settings),
        smtp=smtp,
        allow_private_webhooks=settings.webhook_allow_private_networks,
        timeout=settings.webhook_timeout_seconds,
        webpush=WebPushSender(
            vapid=vapid_key(settings),
            subject=settings.webpush_vapid_subject,
            timeout=settings.webhook_timeout_seconds,
            check_endpoint=check_endpoint,
        ),
        on_push_gone=forget,
        log_links=settings.log_notification_links,
    )


class OutboxTiming(TypedDict):
    claim_lease: timedelta
    retry_base: timedelta


def outbox_timing(settings: Settings) -> OutboxTiming:
    """The dispatcher's lease and retry timing from the settings."""
    return {
        "claim_lease": timedelta(seconds=settings.outbox_claim_lease_seconds),
        "retry_base": timedelta(seconds=settings.outbox_retry_base_seconds),
    }


class Platform:
    """Starts the chosen roles in order (broker, database, ingestor, scheduler, API) and stops them in reverse."""

    def __init__(
        self,
        settings: Settings,
        *,
        roles: Roles,
        clock: Clock | None = None,
        run_jobs: bool = True,
        on_fatal: Callable[[], None] | None = None,
    ):
        if settings.uses_embedded_broker and settings.broker_service_password is None:
            if not roles.broker:
                raise RuntimeError(
                    "set REPLENISH_BROKER_SERVICE_PASSWORD (the same in every process) to reach the embedded broker "
                    "of another process, or REPLENISH_MQTT_URL for an external one"
                )
            # Everything runs in this process: a password for this run only.
            settings = settings.model_copy(update={"broker_service_password": SecretStr(secrets.token_urlsafe(24))})
        self.settings = settings
        self.roles = roles
        self.clock: Clock = clock or SystemClock()
        # With run_jobs=False the scheduler role is assembled but nothing ticks it: tests call the jobs directly.
        self.run_jobs = run_jobs
        self.engine: Engine = make_engine(settings.resolved_database_url)
        self.broker: EmbeddedBroker | None = None
        self.ingestor: MqttIngestor | None = None
        self.publisher: CommandPublisher | None = None
        self.jobs: Jobs | None = None
        self.dispatch_loop: DispatchLoop | None = None
        self.channels: Channels | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.api_server: uvicorn.Server | None = None
        self._api_thread: threading.Thread | None = None
        self.metrics = Metrics(role=roles.names)
        self.metrics_server: MetricsServer | None = None
        self.election: LeaderElection | None = None
        self.membership: MembershipWatch | None = None
        # What a part does when this process must stop at once (its ingest member's sessions were taken by another
        # process): by default, what Ctrl-C does.
        self.on_fatal = on_fatal or self._stop_this_process
        self.failed = False

    def _stop_this_process(self) -> None:
        """What Ctrl-C does, marked as a failure: the command exits 1, and an orchestrator restarts it."""
        self.failed = True
        os.kill(os.getpid(), signal.SIGTERM)

    def start(self) -> None:
        endpoint = self.settings.mqtt_endpoint
        if self.roles.broker or self.roles.uses_database:
            create_schema(self.engine)  # the broker looks devices up in it
        if self.roles.broker:
            assert self.settings.broker_service_password is not None
            self.broker = EmbeddedBroker(
                host=self.settings.broker_host,
                port=self.settings.broker_port,
                database_url=self.settings.resolved_database_url,
                service_password=self.settings.broker_service_password.get_secret_value(),
                credentials_check_seconds=self.settings.broker_credentials_check_seconds,
            )
            self.broker.start()
        if self.roles.ingest:
            client_id = self.settings.mqtt_client_id
            if self.settings.ingest_share_group:
                lanes = self.settings.ingest_lanes
                membership = claim_member(
                    self.settings.resolved_database_url,
                    client_id=client_id,
                    session_ids=lambda member: lane_client_ids(member, lanes),
                )
                client_id = membership.client_id
                self.membership = MembershipWatch(membership, on_lost=self.on_fatal)
                self.membership.start()
            self.ingestor = MqttIngestor(
                engine=self.engine,
                endpoint=endpoint,
                clock=self.clock,
                client_id=client_id,
                share_group=self.settings.ingest_share_group,
                batch_size=self.settings.ingest_batch_size,
                batch_wait_seconds=self.settings.ingest_batch_wait_ms / 1000,
                lanes=self.settings.ingest_lanes,
                metrics=self.metrics,
                dead_letters_per_hour=self.settings.dead_letters_per_device_hour,
            )
            self.ingestor.start()
            if not self.ingestor.wait_ready(15):
                log.warning("ingestor not yet subscribed at %s; it keeps retrying", endpoint.url)
            if "events" in self.settings.ingest_lanes and not self.roles.scheduler and self.run_jobs:
                # The events ingest process delivers urgent notifications (a fall's first ones) the moment they
                # commit, instead of leaving them to the scheduler's next poll. Claims on the outbox keep it and
                # the scheduler from delivering one message twice. It needs the scheduler's notification settings
                # (REPLENISH_PUBLIC_URL, SMTP, webhooks): docs/deployment.md.
                self.channels = make_channels(self.settings, self.engine)
                notifier = Dispatcher(
                    engine=self.engine,
                    clock=self.clock,
                    handlers={OutboxKind.NOTIFICATION: self._notification_handler()},
                    urgent_only=True,
                    metrics=self.metrics,
                    **outbox_timing(self.settings),
                )
                self.dispatch_loop = DispatchLoop(notifier, interval_seconds=self.settings.dispatch_interval_seconds)
                self.dispatch_loop.start()
        if self.roles.scheduler:
            self.publisher = CommandPublisher(
                endpoint, client_id=f"{self.settings.mqtt_client_id}-commands-{PROCESS_TAG}"
            )
            self.publisher.start()
            url = str(self.settings.order_webhook_url) if self.settings.order_webhook_url else None
            self.channels = make_channels(self.settings, self.engine)
            # Each domain delivers its own kinds of outbox message.
            handlers: dict[OutboxKind, OutboxHandler] = {
                **fulfilment_handlers(make_sink(url, timeout=self.settings.webhook_timeout_seconds)),
                OutboxKind.NOTIFICATION: self._notification_handler(),
                OutboxKind.DEVICE_COMMAND: CommandHandler(self.publisher),
            }
            dispatcher = Dispatcher(
                engine=self.engine,
                clock=self.clock,
                handlers=handlers,
                metrics=self.metrics,
                **outbox_timing(self.settings),
            )
            self.jobs = Jobs(
                engine=self.engine,
                clock=self.clock,
                settings=self.settings,
                dispatcher=dispatcher,
                metrics=self.metrics,
            )
            if self.run_jobs:
                # Every scheduler process dispatches the outbox, leader or not: claims with a lease keep two from
                # delivering one message, and a standby's dispatcher keeps orders and notifications flowing while
                # the leader is being replaced.
                self.dispatch_loop = DispatchLoop(dispatcher, interval_seconds=self.settings.dispatch_interval_seconds)
                self.dispatch_loop.start()
                self.election = LeaderElection(
                    self._leader_lock(),
                    name="scheduler",
                    interval=LOCK_CHECK_SECONDS,
                    on_change=lambda leading: self.metrics.scheduler_leader.set(1 if leading else 0),
                )
                self.election.start()
                self.scheduler = make_scheduler(
                    self.jobs, leading=lambda: self.election is not None and self.election.is_leader
                )
                self.scheduler.start()
        if self.roles.api:
            self._start_api()
        if self.settings.metrics_port and self.roles.uses_database:
            # A port of its own, apart from the API's public one: metrics are for the operators' Prometheus only.
            self.metrics_server = self.metrics.serve(host=self.settings.metrics_host, port=self.settings.metrics_port)
            log.info("metrics at http://%s:%d/metrics", self.settings.metrics_host, self.metrics_server.port)

    def _notification_handler(self) -> NotificationHandler:
        assert self.channels is not None
        return NotificationHandler(channels=self.channels, public_url=self.settings.resolved_public_url)

    def _leader_lock(self) -> HeldLock:
        """On PostgreSQL, the scheduler processes elect a leader; on SQLite (one machine, `make run`) there is one."""
        url = self.settings.resolved_database_url
        if is_postgres(url):
            return AdvisoryLock(url, keys=(SCHEDULER_LEADER_LOCK_KEY,), name="scheduler leader")
        return AlwaysHeld()

    def _start_api(self) -> None:
        # Imported here: the routers, FastAPI and the web app are most of what a process loads, and an ingest or
        # scheduler process (several per deployment, restarted on every release) serves none of them.
        import uvicorn

        from replenish.api.app import create_app
        from replenish.api.state import ApiState

        auth.warm_up()  # the first sign-in with an unknown address takes as long as the others
        # Only the API reads the database gauges: every role sees the same database, one copy of them is enough.
        self.metrics.registry.register(DatabaseCollector(engine=self.engine, clock=self.clock))
        app = create_app(
            ApiState(
                engine=self.engine,
                clock=self.clock,
                broker=BrokerProbe(self.settings.mqtt_endpoint),
                session_lifetime=timedelta(hours=self.settings.session_hours),
                web_live_seconds=self.settings.web_live_seconds,
                fulfilment_secrets={
                    name: secret.get_secret_value() for name, secret in self.settings.fulfilment_partner_secrets.items()
                },
                fulfilment_tolerance_seconds=self.settings.fulfilment_signature_tolerance_seconds,
                push_public_key=application_server_key(vapid_key(self.settings)),
                # Without SMTP a sign-up's link goes to the log, shown only where the operator asked for links there.
                sign_up_channel="email" if self.settings.smtp_host else "log",
                telephony=make_telephony(self.settings),
                provider_status_url=provider_status_url(self.settings),
            )
        )
        config = uvicorn.Config(
            app,
            host=self.settings.api_host,
            port=self.settings.api_port,
            log_level="warning",
            lifespan="off",
            # uvicorn's own logging config gives its loggers handlers of their own: its lines would skip the JSON
            # format (observability/logging.py). Without it they go to the root logger like everything else.
            log_config=None,
        )
        self.api_server = uvicorn.Server(config)
        self._api_thread = threading.Thread(target=self.api_server.run, name="api", daemon=True)
        self._api_thread.start()
        for _ in range(200):
            if self.api_server.started or not self._api_thread.is_alive():
                break
            threading.Event().wait(0.05)
        if not self.api_server.started:
            raise RuntimeError(f"API did not start on {self.settings.api_host}:{self.settings.api_port}")

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def stop(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.api_server is not None:
            self.api_server.should_exit = True
            if self._api_thread is not None:
                self._api_thread.join(10)
        if self.jobs is not None:
            self.jobs.stopping.set()  # a running pass ends at its next item or transaction
            self.jobs.leader_work.wait_idle(timeout=60)
        if self.election is not None:
            # Once no leader's job of ours runs, and before an evaluation batch ends: a standby takes over at once,
            # so an escalation step never waits on an evaluation.
            self.election.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        if self.ingestor is not None:
            self.ingestor.stop()  # first: what it stores while draining is still dispatched below
        if self.membership is not None:
            self.membership.stop()  # after the ingestor left the broker: the next holder of the sessions may connect
        if self.dispatch_loop is not None:
            self.dispatch_loop.stop()
        if self.channels is not None:
            self.channels.close()
        if self.publisher is not None:
            self.publisher.stop()
        if self.broker is not None:
            self.broker.stop()
        self.engine.dispose()
