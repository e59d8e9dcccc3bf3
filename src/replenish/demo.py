"""`replenish up --demo`: a demo customer with a printer, a fridge and a wearable, driven by their simulators."""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import select

from replenish.auth import service as auth
from replenish.auth.models import DeviceShare
from replenish.config import MqttEndpoint
from replenish.consent import service as consent
from replenish.consent.schemas import ConsentDocument, EmergencyContact
from replenish.constants import AccountRole, ConsentMode, HouseholdRole, TokenKind
from replenish.customers import service as customers
from replenish.customers.models import Customer
from replenish.db import transaction
from replenish.devices import service as devices
from replenish.simulation.devices import DeviceModel, FridgeModel, PrinterModel, WearableModel
from replenish.simulation.registration import device_request
from replenish.simulation.runner import run_device

log = logging.getLogger(__name__)

DEMO_EMAIL = "demo@replenish.example"
DEMO_OPERATOR_EMAIL = "operator@replenish.example"
# The demo household's member (approves orders up to DEMO_MEMBER_LIMIT) and the carer the wearable is shared with.
DEMO_MEMBER_EMAIL = "member@replenish.example"
DEMO_CARER_EMAIL = "carer@replenish.example"
DEMO_MEMBER_LIMIT = Decimal("50.00")
PRINTER_ID = "demo-printer"
FRIDGE_ID = "demo-fridge"
WEARABLE_ID = "demo-wearable"
DEMO_STORED_TIMEOUT_SECONDS = 3.0
PRINTER_HISTORY = timedelta(days=21)
FRIDGE_HISTORY = timedelta(days=7)
# A two-litre bottle lasts about four days. The last one was bought so that about a day and a half is left now,
# whatever the hour (the fridge is used at breakfast and in the evening, so how much of a fixed span was drunk depends
# on when it is), the one before it a bottle's life earlier; the milk never runs out in the replayed week. A dozen
# eggs, four days ago (half left).
MILK_BOTTLE_LIFE = timedelta(days=3, hours=12)
MILK_LAST_BOUGHT_AGO = [timedelta(hours=hours) for hours in range(40, 150)]
MILK_LEFT_NOW = (0.5, 0.9)  # litres: asking first is due, with milk left while the customer answers
EGGS_BOUGHT_AGO = timedelta(days=4)
# The wearable falls after this share of the catch-up (Settings.demo_catch_up_seconds): while the history is
# replayed, so that its alert comes as the forecasts do.
FALL_AFTER_CATCH_UP = 0.8
DEMO_CANCEL_WINDOW_SECONDS = 10
# Where the demo's wearer falls: its messages carry the place and a map link.
DEMO_WEARER_LOCATION = {"latitude": 52.5163, "longitude": 13.3777, "accuracy": 15, "room": "bathroom"}
DEMO_ESCALATION_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Credentials:
    email: str
    password: str
    token: str

    def to_json(self) -> dict[str, str]:
        return {"email": self.email, "password": self.password, "token": self.token}


@dataclass(frozen=True)
class DemoAccounts:
    customer_id: str
    customer: Credentials
    operator: Credentials
    device_secrets: dict[str, str]
    member: Credentials | None = None
    carer: Credentials | None = None

    def to_json(self) -> dict[str, dict[str, str]]:
        """var/demo-credentials.json: sign-ins, and each demo device's MQTT password (its username is its id)."""
        household = {name: c.to_json() for name, c in (("member", self.member), ("carer", self.carer)) if c}
        return {
            "customer": self.customer.to_json(),
            "operator": self.operator.to_json(),
            **household,
            "devices": self.device_secrets,
        }


def seed(*, engine: Engine, now: datetime, models: list[DeviceModel]) -> DemoAccounts:
    """Create the demo customer with their household's member and carer, and an operator, each with a fresh password
    and a personal API token, and register the simulated devices with exactly the slots they report. On a database
    that has them already (an external REPLENISH_DATABASE_URL), the accounts get new passwords and tokens, and their
    roles as the banner states them; the rest is left as it is. An address of the demo's that belongs to an account
    outside it is refused rather than reset."""
    passwords = {
        email: secrets.token_urlsafe(12)
        for email in (DEMO_EMAIL, DEMO_OPERATOR_EMAIL, DEMO_MEMBER_EMAIL, DEMO_CARER_EMAIL)
    }
    with transaction(engine) as session:
        customer = session.exec(select(Customer).where(Customer.email == DEMO_EMAIL)).first()
        device_secrets: dict[str, str] = {}
        if customer is None:
            customer = customers.create(
                session=session,
                name="Demo Customer",
                email=DEMO_EMAIL,
                consent_document=ConsentDocument(default_mode=ConsentMode.ASK_FIRST),
                actor="demo",
                now=now,
            )
            for model in models:
                _, device_secrets[model.device_id] = devices.register(
                    session=session, request=device_request(model, customer_id=customer.id), actor="demo", now=now
                )
            # Version 2: the printer may order by itself; anything else still asks first.
            consent.record(
                session=session,
                customer_id=customer.id,
                document=ConsentDocument(
                    default_mode=ConsentMode.ASK_FIRST,
                    device_modes={PRINTER_ID: ConsentMode.AUTO_ORDER},
                    # The wearable's fall escalates in the platform's log: a neighbour, then a daughter.
                    emergency_contacts=[
                        EmergencyContact(name="Demo neighbour", channel="log"),
                        EmergencyContact(name="Demo daughter", channel="log"),
                    ],
                    fall_cancel_window_seconds=DEMO_CANCEL_WINDOW_SECONDS,
                    escalation_timeout_seconds=DEMO_ESCALATION_TIMEOUT_SECONDS,
                ),
                actor="demo",
                now=now,
            )
        for model in models:
            if model.device_id not in device_secrets:  # registered by an earlier run: its secret is not kept
                device = devices.get(session=session, device_id=model.device_id)
                device_secrets[model.device_id] = devices.rotate_credentials(
                    session=session, device=device, actor="demo", now=now
                )
        tokens = {}
        # The household: its owner, a member who approves orders up to DEMO_MEMBER_LIMIT, and a carer who sees the
        # wearable only (as if invited from the Household page).
        for email, role, customer_id, household_role in (
            (DEMO_EMAIL, AccountRole.CUSTOMER, customer.id, HouseholdRole.OWNER),
            (DEMO_OPERATOR_EMAIL, AccountRole.OPERATOR, None, None),
            (DEMO_MEMBER_EMAIL, AccountRole.CUSTOMER, customer.id, HouseholdRole.MEMBER),
            (DEMO_CARER_EMAIL, AccountRole.CUSTOMER, customer.id, HouseholdRole.CARER),
        ):
            existing = auth.find_account(session=session, email=email)
            if existing is not None and (existing.role, existing.customer_id) != (role, customer_id):
                raise RuntimeError(f"{email} is an account outside the demo: the demo will not reset its password")
            account = auth.set_password(session=session, email=email, password=passwords[email], now=now)
            if account is None:
                account = auth.create_account(
                    session=session,
                    email=email,
                    password=passwords[email],
                    role=role,
                    customer_id=customer_id,
                    now=now,
                    household_role=household_role,
                    name={DEMO_MEMBER_EMAIL: "Demo member", DEMO_CARER_EMAIL: "Demo carer"}.get(email),
                )
            # As the banner says, on a database from an earlier run too.
            account.household_role = household_role
            account.approval_limit = DEMO_MEMBER_LIMIT if household_role is HouseholdRole.MEMBER else None
            session.add(account)
            if household_role is HouseholdRole.CARER and session.get(DeviceShare, (account.id, WEARABLE_ID)) is None:
                session.add(DeviceShare(account_id=account.id, device_id=WEARABLE_ID, created_at=now))
            _, tokens[email] = auth.issue_token(
                session=session, account=account, kind=TokenKind.PERSONAL, name="demo", now=now, lifetime=None
            )

        def credentials(email: str) -> Credentials:
            return Credentials(email, passwords[email], tokens[email])

        return DemoAccounts(
            customer_id=customer.id,
            customer=credentials(DEMO_EMAIL),
            operator=credentials(DEMO_OPERATOR_EMAIL),
            device_secrets=device_secrets,
            member=credentials(DEMO_MEMBER_EMAIL),
            carer=credentials(DEMO_CARER_EMAIL),
        )


def fall_after(catch_up_seconds: float) -> timedelta:
    return timedelta(seconds=round(FALL_AFTER_CATCH_UP * catch_up_seconds))


def _fridge(now: datetime, milk_last_bought_ago: timedelta) -> FridgeModel:
    fridge = FridgeModel(
        FRIDGE_ID,
        start=now - FRIDGE_HISTORY,
        seed=11,
        report_interval=timedelta(hours=3),
        initial_levels={"milk": 2.0, "eggs": 12},
    )
    for ago in (milk_last_bought_ago + MILK_BOTTLE_LIFE, milk_last_bought_ago):
        if ago < FRIDGE_HISTORY:
            fridge.refill("milk", now - ago)
    fridge.refill("eggs", now - EGGS_BOUGHT_AGO)
    return fridge


def _milk_replayed(fridge: FridgeModel, now: datetime) -> tuple[float, bool]:
    """The milk a fridge's replayed week leaves at ``now``, and whether a reading on the way showed none (a probe:
    run on a copy with the same seed, which the real one then replays exactly)."""
    probe = copy.deepcopy(fridge)
    readings = [m.payload["levels"]["milk"] for m in probe.advance_to(now) if m.channel == "telemetry"]
    return probe.levels["milk"], min(readings, default=1.0) <= 0


def _demo_fridge(now: datetime) -> FridgeModel:
    """The first fridge whose milk never ran out and leaves MILK_LEFT_NOW; failing that, the one closest to it."""
    low, high = MILK_LEFT_NOW
    best: tuple[float, FridgeModel] | None = None
    for ago in MILK_LAST_BOUGHT_AGO:
        fridge = _fridge(now, ago)
        left, ran_out = _milk_replayed(fridge, now)
        if low <= left <= high and not ran_out:
            return fridge
        miss = abs(left - (low + high) / 2) + (1.0 if ran_out else 0.0)
        if best is None or miss < best[0]:
            best = (miss, fridge)
    assert best is not None
    return best[1]


def demo_models(now: datetime, *, catch_up_seconds: float) -> list[DeviceModel]:
    # seq must keep growing across demo runs, as a real device's does across reboots.
    seq_base = int(now.timestamp())
    printer = PrinterModel(
        PRINTER_ID,
        start=now - PRINTER_HISTORY,
        seed=7,
        report_interval=timedelta(hours=2),
        # Black runs out first: about three days of ink left at the end of the replayed history.
        initial_levels={"black": 0.97, "cyan": 0.9, "magenta": 0.85, "yellow": 0.95},
    )
    # Nothing runs out during the replayed week: the approval requests (with their one-tap links, in the log) come
    # while there is still milk and eggs left.
    fridge = _demo_fridge(now)
    wearable = WearableModel(
        WEARABLE_ID, start=now, seed=3, fall_at=now + fall_after(catch_up_seconds), location=DEMO_WEARER_LOCATION
    )
    for model in (printer, fridge, wearable):
        model.seq = seq_base
    return [printer, fridge, wearable]


@dataclass
class DemoDevices:
    """The simulators, each a real MQTT client in its own thread."""

    endpoint: MqttEndpoint
    models: list[DeviceModel]
    secrets: dict[str, str]
    catch_up_seconds: float
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for model in self.models:
            history = datetime.now(UTC) - model.start
            speed = max(history.total_seconds() / self.catch_up_seconds, 1.0)
            thread = threading.Thread(
                target=run_device,
                args=(model, replace(self.endpoint, username=model.device_id, password=self.secrets[model.device_id])),
                kwargs={
                    "speed": speed,
                    "catch_up": True,
                    "stop": self.stop_event,
                    "client_id": model.device_id,
                    # The platform stops with the demo: a last confirmation may never come.
                    "stored_timeout": DEMO_STORED_TIMEOUT_SECONDS,
                },
                name=f"sim-{model.device_id}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + 10
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
