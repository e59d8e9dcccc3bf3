"""Imports every table model so that SQLModel.metadata knows the whole schema."""

from replenish.alerts.models import Alert, EscalationAttempt, EscalationStep
from replenish.answers.models import OrderLink
from replenish.audit.models import AuditEvent
from replenish.auth.models import AccessToken, Account, DeviceShare
from replenish.automation.models import Decision
from replenish.catalogue.models import Product, ProductVersion
from replenish.consent.models import ConsentVersion
from replenish.customers.models import Customer, PendingSignUp
from replenish.devices.models import Device, Slot, SlotForecast, SlotWindow
from replenish.health.models import Alarm
from replenish.households.models import Invitation
from replenish.ingest.models import DeadLetter, DeadLetterOverflow, DeviceMessage, Reading
from replenish.insights.models import MonthlyDigest, UsageNorm
from replenish.notifications.models import Notification, PushSubscription
from replenish.orders.models import Order, OrderEvent
from replenish.outbox.models import OutboxMessage
from replenish.outcomes.models import CalibrationGroup, CycleOutcome, ForecastReliability

__all__ = [
    "AccessToken",
    "Account",
    "Alarm",
    "Alert",
    "AuditEvent",
    "CalibrationGroup",
    "ConsentVersion",
    "Customer",
    "CycleOutcome",
    "DeadLetter",
    "DeadLetterOverflow",
    "Decision",
    "Device",
    "DeviceMessage",
    "DeviceShare",
    "EscalationAttempt",
    "EscalationStep",
    "ForecastReliability",
    "Invitation",
    "MonthlyDigest",
    "Notification",
    "Order",
    "OrderEvent",
    "OrderLink",
    "OutboxMessage",
    "PendingSignUp",
    "Product",
    "ProductVersion",
    "PushSubscription",
    "Reading",
    "Slot",
    "SlotForecast",
    "SlotWindow",
    "UsageNorm",
]
