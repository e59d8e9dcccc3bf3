"""The `replenish` command: the whole platform in one process, or one role per process as in production."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlalchemy.engine import make_url

from replenish.clock import SystemClock
from replenish.config import Settings
from replenish.constants import (
    DEFAULT_PULL_FORWARD_DAYS,
    DEFAULT_SERVICE_LEVEL,
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    AccountRole,
)
from replenish.observability.logging import configure_logging

if TYPE_CHECKING:
    from replenish.demo import DemoDevices
    from replenish.runtime import Platform

# The platform, the demo and the web push keys are imported by the commands that use them: a backtest or a
# migration should not pay a second for loading the web app.

app = typer.Typer(
    help="Replenish: IoT auto-replenishment and device monitoring.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
accounts_app = typer.Typer(help="Sign-in accounts.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
catalogue_app = typer.Typer(help="The product catalogue.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")
forecasts_app = typer.Typer(help="Slot forecasts.", no_args_is_help=True)
app.add_typer(forecasts_app, name="forecasts")

DEMO_EVALUATION_INTERVAL_SECONDS = 5.0


def _settings() -> Settings:
    settings = Settings()
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    return settings


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _run(platform: Platform, *, demo: bool = False) -> None:
    """Start, wait for Ctrl-C or SIGTERM, stop everything in reverse order."""
    simulators = None
    try:
        try:
            platform.start()
        except (RuntimeError, OSError, TimeoutError) as exc:
            # A taken port or an unreachable database: say so plainly rather than with a traceback.
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if platform.roles.ingest:
            from replenish.ingest.consumer import tune_garbage_collection

            tune_garbage_collection()
        if demo:
            simulators = _start_demo(platform)
        if platform.roles.api:
            _print_banner(platform, demo=demo)
        _wait_for_signal()
    finally:
        typer.echo("stopping…")
        if simulators is not None:
            simulators.stop()
        platform.stop()
    if platform.failed:
        raise typer.Exit(1)


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Seed a demo customer and run simulated devices.")] = False,
) -> None:
    """Run everything in one process: embedded broker (unless REPLENISH_MQTT_URL is set), ingestor, jobs, API."""
    settings = _settings()
    if demo:
        updates: dict[str, object] = {
            "evaluation_interval_seconds": min(settings.evaluation_interval_seconds, DEMO_EVALUATION_INTERVAL_SECONDS),
            # The demo customer's channel is the log: its requests are answered from there.
            "log_notification_links": True,
        }
        if settings.database_url is None:
            # A fresh database each run: the demo replays weeks of device history into it.
            demo_db = settings.data_dir / "demo.db"
            for leftover in demo_db.parent.glob("demo.db*"):
                leftover.unlink()
            updates["database_url"] = f"sqlite:///{demo_db}"
        settings = settings.model_copy(update=updates)
    from replenish.runtime import Platform, Roles

    _run(Platform(settings, roles=Roles.all_in_one(settings)), demo=demo)


def _start_demo(platform: Platform) -> DemoDevices:
    from replenish.demo import DemoDevices, demo_models, seed

    now = platform.clock.now()
    catch_up = platform.settings.demo_catch_up_seconds
    models = demo_models(now, catch_up_seconds=catch_up)
    accounts = seed(engine=platform.engine, now=now, models=models)
    path = demo_credentials_path(platform.settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)  # secrets: readable by their owner only
    path.chmod(0o600)
    path.write_text(json.dumps(accounts.to_json(), indent=2))
    simulators = DemoDevices(
        endpoint=platform.settings.mqtt_endpoint,
        models=models,
        secrets=accounts.device_secrets,
        catch_up_seconds=catch_up,
    )
    if platform.scheduler is not None:
        # A half-replayed history is days old: deciding on it would ask about milk "running out yesterday". The
        # first evaluation comes once the devices have caught up with now, as a real fridge always is.
        platform.scheduler.pause_job("evaluate")
        resume = threading.Timer(catch_up, platform.scheduler.resume_job, args=("evaluate",))
        resume.daemon = True
        resume.start()
    simulators.start()
    return simulators


def demo_credentials_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "demo-credentials.json"


def _print_banner(platform: Platform, *, demo: bool) -> None:
    api = platform.api_url
    lines = [
        "",
        "Replenish is running.",
        f"  web app      {api}/app",
        f"  API docs     {api}/docs",
        f"  MQTT broker  {platform.settings.mqtt_endpoint.url}" + (" (embedded)" if platform.roles.broker else ""),
        f"  database     {make_url(platform.settings.resolved_database_url).render_as_string(hide_password=True)}",
    ]
    if demo:
        from replenish.demo import fall_after

        credentials = json.loads(demo_credentials_path(platform.settings).read_text())
        customer, operator = credentials["customer"], credentials["operator"]
        bearer = f'-H "Authorization: Bearer {customer["token"]}"'
        lines += [
            "",
            f"Sign in (also in {demo_credentials_path(platform.settings)}):",
            f"  customer     {customer['email']}  password {customer['password']}",
            f"  operator     {operator['email']}  password {operator['password']}",
            *(
                f"  {role:<12} {credentials[role]['email']}  password {credentials[role]['password']}"
                for role in ("member", "carer")
                if role in credentials
            ),
            "  (the member sees the supplies and approves orders up to 50.00; the carer sees only the wearable)",
            "",
            "Demo: a printer, a fridge and a wearable replay their history now. Within a minute, as the customer:",
            f"  forecasts    curl -s {bearer} {api}/api/v1/devices/demo-printer",
            f"  orders       curl -s {bearer} {api}/api/v1/orders",
            f"  alerts       curl -s {bearer} {api}/api/v1/alerts",
            f"  (the wearable falls after {fall_after(platform.settings.demo_catch_up_seconds).seconds} s; 10 s later"
            " its emergency contacts are asked, one every 30 s, in the log below)",
            f"  device health curl -s {bearer} {api}/api/v1/alarms",
        ]
    lines += ["", "Ctrl-C stops everything.", ""]
    typer.echo("\n".join(lines))


@app.command()
def api() -> None:
    """Run the HTTP API only."""
    from replenish.runtime import Platform, Roles

    _run(Platform(_settings(), roles=Roles(api=True)))


@app.command()
def ingest() -> None:
    """Run the MQTT ingestor only (needs REPLENISH_MQTT_URL or a broker on the default address)."""
    from replenish.runtime import Platform, Roles

    _run(Platform(_settings(), roles=Roles(ingest=True)))


@app.command()
def scheduler() -> None:
    """Run the forecasting/automation job and the outbox dispatcher only."""
    from replenish.runtime import Platform, Roles

    _run(Platform(_settings(), roles=Roles(scheduler=True)))


@app.command()
def broker() -> None:
    """Run the embedded amqtt broker only (for development; production uses Mosquitto)."""
    from replenish.runtime import Platform, Roles

    _run(Platform(_settings(), roles=Roles(broker=True)))


@app.command()
def backtest(
    readings: Annotated[Path, typer.Argument(help="READINGS.csv: device_id,slot,ts,level, sorted by ts.")],
    lead_time_days: Annotated[float, typer.Option(min=0, help="Delivery lead time L in days.")],
    out: Annotated[Path, typer.Option(help="ORDERS.csv to write: device_id,slot,ordered_at.")],
    service_level: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Every slot's target service level (live default 0.97).")
    ] = DEFAULT_SERVICE_LEVEL,
    margin_days: Annotated[
        float | None, typer.Option(min=0, help="Safety margin in days (default: REPLENISH_REORDER_MARGIN_DAYS).")
    ] = None,
    pull_forward_days: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="When a slot orders, the device's other slots that would order within this many days join its "
            "shipment (same ordered_at). Default 0, as the contract says: each slot alone. The live platform's "
            f"default is {DEFAULT_PULL_FORWARD_DAYS:g} (consent pull_forward_days).",
        ),
    ] = 0.0,
    learning: Annotated[
        bool,
        typer.Option(
            help="Calibrate each slot's forecasts from the outcomes of the cycles that ended before each decision, as "
            "the live service does (forecasting.calibration); --no-learning plans every slot at the service level.",
        ),
    ] = True,
    decisions: Annotated[
        Path | None,
        typer.Option(
            help="Also write DECISIONS.csv: each order with the forecast it was decided on (device_id,slot,"
            "ordered_at,empty_at,empty_at_early,empty_at_late,service_level), to check the stated probability.",
        ),
    ] = None,
) -> None:
    """Replay readings through the live forecasting and reorder code, every slot on auto-order (no look-ahead),
    each device one customer whose slots share shipments."""
    from replenish.backtest.replay import ReadingsError, read_readings, replay, write_decisions, write_orders

    settings = Settings()
    if not readings.is_file():
        typer.echo(f"error: {readings} is not a file", err=True)
        raise typer.Exit(2)
    try:
        orders = replay(
            read_readings(readings),
            lead_time_days=lead_time_days,
            margin_days=settings.reorder_margin_days if margin_days is None else margin_days,
            service_level=service_level,
            pull_forward_days=pull_forward_days,
            learn=learning,
        )
    except ReadingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    write_orders(out, orders)
    if decisions is not None:
        write_decisions(decisions, orders)
    typer.echo(f"{len(orders)} order(s) written to {out}")


@accounts_app.command("create-operator")
def create_operator(
    email: Annotated[str, typer.Option(help="The operator's sign-in e-mail.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="REPLENISH_NEW_OPERATOR_PASSWORD",
            help=f"At least {PASSWORD_MIN_LENGTH} characters; prompted for when not given.",
        ),
    ],
) -> None:
    """Create an operator account (operators see every customer, dead letters, and update fulfilment)."""
    from replenish.auth import service as auth
    from replenish.db import make_engine, transaction
    from replenish.errors import DomainError
    from replenish.schema import create_schema

    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        typer.echo(f"error: the password needs {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters", err=True)
        raise typer.Exit(2)
    try:  # the same check as signing up: an address nobody could sign up with is no operator's either
        email = TypeAdapter(EmailStr).validate_python(email)
    except ValidationError as exc:
        typer.echo(f"error: {email!r} is not an e-mail address: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    try:
        with transaction(engine) as session:
            account = auth.create_account(
                session=session,
                email=email,
                password=password,
                role=AccountRole.OPERATOR,
                customer_id=None,
                now=SystemClock().now(),
            )
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"operator {account.email} created; sign in at POST /api/v1/auth/token")


@catalogue_app.command("import")
def catalogue_import(
    file: Annotated[Path, typer.Argument(help="A CSV file: a header row, then a product per row.", exists=True)],
) -> None:
    """Import a catalogue file, all or nothing: with a bad row, nothing is imported and every bad row is listed with
    its line and column. Columns: sku, name, pack_size, unit, price, currency, device_kinds, slot_names, available
    (lists separated by |). A product whose row changes something gets a new version; orders keep theirs."""
    from replenish.catalogue import service as catalogue
    from replenish.db import make_engine, transaction
    from replenish.schema import create_schema

    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        typer.echo(f"error: {file} is not UTF-8 text (byte {exc.start})", err=True)
        raise typer.Exit(2) from None
    try:
        rows = catalogue.parse_csv(text)
    except catalogue.ImportRefused as exc:
        typer.echo(f"error: {exc.message}", err=True)
        for issue in exc.issues:
            column = f" {issue.field}:" if issue.field else ""
            typer.echo(f"  {file}:{issue.line}:{column} {issue.reason}", err=True)
        raise typer.Exit(1) from None
    engine = make_engine(_settings().resolved_database_url)
    create_schema(engine)
    with transaction(engine) as session:
        counts = catalogue.import_rows(session=session, rows=rows, actor="cli", now=SystemClock().now())
    typer.echo(f"imported {file}: {counts.created} new, {counts.changed} changed, {counts.unchanged} unchanged")


@app.command("vapid-key")
def vapid_key() -> None:
    """Print a new VAPID private key for Web Push, as REPLENISH_WEBPUSH_VAPID_PRIVATE_KEY takes it (for .env). Every
    process must have the same one; changing it later unsubscribes every browser."""
    from replenish.notifications.push import new_private_key

    typer.echo(f"REPLENISH_WEBPUSH_VAPID_PRIVATE_KEY={new_private_key()}")


@app.command("mosquitto-files")
def mosquitto_files(
    out: Annotated[
        Path, typer.Option(help="Directory for devices.passwd, devices.acl and platform.passwd (mosquitto.conf).")
    ],
    every: Annotated[
        float | None,
        typer.Option(min=0.1, help="Keep running: bring the files up to date every this many seconds."),
    ] = None,
) -> None:
    """Write Mosquitto's password files (every device's stored hash; the service user with
    REPLENISH_BROKER_SERVICE_PASSWORD) and the ACL that confines each device to its own topics. Mosquitto reads
    them on SIGHUP (deploy/mosquitto/reload-on-change.sh sends it when they change)."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from replenish.db import make_engine
    from replenish.mqtt.mosquitto import sync_files
    from replenish.schema import create_schema

    settings = _settings()
    if settings.broker_service_password is None:
        typer.echo("error: set REPLENISH_BROKER_SERVICE_PASSWORD: the platform's clients sign in with it", err=True)
        raise typer.Exit(2)
    service_password = settings.broker_service_password.get_secret_value()
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)

    def sync() -> None:
        with Session(engine) as session:
            changed = sync_files(out, session=session, service_password=service_password)
        if changed:
            typer.echo(f"wrote {', '.join(str(path) for path in changed)}")

    if every is None:
        sync()
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while True:
        try:
            sync()
        except (SQLAlchemyError, OSError) as exc:
            # The files keep their last good content; the next pass tries again.
            logging.getLogger("replenish.mosquitto").error("could not bring the Mosquitto files up to date: %s", exc)
        if stop.wait(every):
            return


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the migration changes, in a few words.")],
) -> None:
    """For developers: write a new migration (src/replenish/migrations/versions) from what the models have and the
    migrations do not; read it and adjust it before committing it."""
    import tempfile

    from alembic import command

    from replenish.db import make_engine
    from replenish.schema import create_schema, migration_config

    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(f"sqlite:///{Path(directory) / 'head.db'}")
        create_schema(engine)  # a database at the newest migration, to compare the models with
        with engine.begin() as connection:
            script = command.revision(migration_config(connection), message=message, autogenerate=True)
        engine.dispose()
    typer.echo(f"wrote {getattr(script, 'path', script)}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations the database lacks (every role also does this at start-up)."""
    from replenish.db import make_engine
    from replenish.schema import OutdatedSchema, create_schema

    settings = _settings()
    try:
        create_schema(make_engine(settings.resolved_database_url))
    except OutdatedSchema as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"schema ready at {make_url(settings.resolved_database_url).render_as_string(hide_password=True)}")


@forecasts_app.command("rebuild")
def forecasts_rebuild() -> None:
    """Forecast every slot again from its readings and decide on it now, as the evaluation job would; a running
    scheduler's evaluators share the work (every slot is marked due). The stored reading windows are dropped
    first: each slot's is rebuilt from the readings table."""
    from replenish import models  # noqa: F401  (every table: decisions reach orders, notifications, alerts)
    from replenish.automation.service import evaluate_all
    from replenish.db import make_engine
    from replenish.schema import create_schema

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    report = evaluate_all(
        engine=engine,
        now=SystemClock().now(),
        margin_days=settings.reorder_margin_days,
        minimum_basket=settings.minimum_basket,
    )
    typer.echo(f"{report.forecasts} slots forecast, {len(report.decisions)} decisions, {report.errors} errors")
    if report.errors:
        raise typer.Exit(1)
