"""Names shared across domains: MQTT topics, modes and states. One place, so they cannot drift."""

from __future__ import annotations

import re
from enum import StrEnum

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
MAX_PAYLOAD_BYTES = 16 * 1024
# The largest MQTT packet either broker takes (Mosquitto's max_packet_size; the embedded broker's reader): a client
# that sends a larger one is disconnected, and nothing of it is stored. Payloads between MAX_PAYLOAD_BYTES and this
# still reach the ingestor, which keeps them as dead letters (too_large) with their first DEAD_LETTER_KEEP_BYTES.
MAX_PACKET_BYTES = 64 * 1024
# What a dead letter keeps of its payload (and its full size): enough to see what was sent, bounded however much.
DEAD_LETTER_KEEP_BYTES = 4 * 1024
# By default at most this many dead letters per device (all unregistered senders share one allowance) and hour;
# beyond, they are counted, not kept (REPLENISH_DEAD_LETTERS_PER_DEVICE_HOUR).
DEAD_LETTERS_PER_DEVICE_HOUR = 1000
# The allowance all messages from unregistered or unnamed senders share.
UNREGISTERED_SENDERS = "(unregistered)"

TOPIC_PREFIX = "devices"
TELEMETRY_TOPIC = "devices/{device_id}/telemetry"
EVENTS_TOPIC = "devices/{device_id}/events"
STATUS_TOPIC = "devices/{device_id}/status"
COMMANDS_TOPIC = "devices/{device_id}/commands"
# Platform -> device, QoS 0: the seqs the platform has stored or refused for good (docs/mqtt.md, "Confirmations").
STORED_TOPIC = "devices/{device_id}/stored"
# The ingestor gathers confirmations for this long and sends each device at most one message per interval.
CONFIRM_INTERVAL_SECONDS = 0.5
# Ranges per confirmation message: 1,000 ranges of two 64-bit seqs stay well inside MAX_PACKET_BYTES.
CONFIRM_MAX_RANGES = 1000
INGEST_SUBSCRIPTIONS = ("devices/+/telemetry", "devices/+/events", "devices/+/status")
MQTT_QOS = 1
# MQTT 5 shared subscriptions: with REPLENISH_INGEST_SHARE_GROUP set, each ingest process subscribes to
# $share/{group}/{topic}, and the broker hands each message to one member of the group.
SHARED_SUBSCRIPTION_PREFIX = "$share"
# A member of a share group takes the lowest free member number (1, 2, ...), which names its persistent sessions: a
# process that replaces a dead one takes over its sessions and the messages the broker queued for them.
INGEST_SHARE_MAX_MEMBERS = 64
# MQTT 5 Session Expiry Interval of the ingestor's persistent sessions: 0xFFFFFFFF is "never", as an MQTT 3.1.1
# session without clean session is (what the ingestor keeps when it speaks 3.1.1).
INGEST_SESSION_EXPIRY_NEVER = 0xFFFFFFFF

# PostgreSQL advisory locks, all in one place so that no two uses share a key. Arbitrary, constant numbers.
# Schema migrations, held for the migrating transaction (pg_advisory_xact_lock).
SCHEMA_LOCK_KEY = 0x5E_1E_15
# The scheduler's leader, held for the leader's database session (pg_try_advisory_lock).
SCHEDULER_LEADER_LOCK_KEY = 0x5E_1E_16
# An ingest member's MQTT sessions: one lock per client id, key = this namespace and a hash of the client id
# (pg_try_advisory_lock(int4, int4)), held for the member's database session.
MQTT_SESSION_LOCK_NAMESPACE = 0x5E_1E_17
# How often a held lock's session is checked, and a standby tries to take a free one.
LOCK_CHECK_SECONDS = 1.0


class DeadLetterReason(StrEnum):
    """Why a message was dead-lettered, as a category: the metrics label (a small fixed set, unlike the free-text
    reason stored with the dead letter)."""

    BAD_TOPIC = "bad_topic"  # not devices/{device_id}/{channel}, an invalid device id, an unknown channel
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"  # not UTF-8, not JSON, not a JSON object, not a status
    INVALID = "invalid"  # JSON, but not what the contract allows
    UNSTORABLE = "unstorable"  # JSON no database keeps alike: NUL, lone surrogates, huge numbers, deep nesting
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_SLOT = "unknown_slot"
    OUT_OF_RANGE = "out_of_range"  # a level outside its slot's capacity
    LOCATION_DROPPED = "location_dropped"  # an event kept without its invalid location
    INTERNAL_ERROR = "internal_error"  # the platform failed to store it


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"


class DeviceKind(StrEnum):
    PRINTER = "printer"
    FRIDGE = "fridge"
    WEARABLE = "wearable"
    OTHER = "other"


class ConsentMode(StrEnum):
    AUTO_ORDER = "auto_order"
    ASK_FIRST = "ask_first"
    NOTIFY_ONLY = "notify_only"
    OFF = "off"


class EventType(StrEnum):
    FALL_DETECTED = "fall_detected"
    FALL_CANCELLED = "fall_cancelled"
    HELP_REQUESTED = "help_requested"
    BATTERY_LOW = "battery_low"
    # A physical reorder button (as Dash buttons were): order the named slot's consumable now.
    REORDER_REQUESTED = "reorder_requested"


class DecisionAction(StrEnum):
    PLACE_ORDER = "place_order"
    REQUEST_APPROVAL = "request_approval"
    NOTIFY = "notify"


class NoAnswer(StrEnum):
    """What happens to an order awaiting approval when its latest useful answer time passes unanswered."""

    KEEP_WAITING = "keep_waiting"
    DECLINE = "decline"
    APPROVE = "approve"


class LinkAction(StrEnum):
    """What a one-tap link in a notification does to its order."""

    APPROVE = "approve"
    DECLINE = "decline"
    CANCEL = "cancel"


class NoticeKind(StrEnum):
    """What a customer's notification is about: how the web app and the channels tell them apart."""

    LOW = "low"  # notify-only: a slot is running low
    APPROVAL_REQUEST = "approval_request"
    APPROVAL_REMINDER = "approval_reminder"
    NO_ANSWER = "no_answer"  # the latest useful answer time passed, and what happened then
    ORDER_PLACED = "order_placed"  # an automatic order, with its cancel window
    ORDER_SHIPPED = "order_shipped"
    ORDER_DELIVERED = "order_delivered"
    DELIVERY_NUDGE = "delivery_nudge"  # delivered, but the slot still reads low
    SAFETY = "safety"  # a fall or help request, its escalation
    DEVICE_HEALTH = "device_health"  # a device offline, low on battery, a stuck sensor
    ORDER_CHANGED = "order_changed"  # a consent change cancelled or held an order
    DIGEST = "digest"  # the day's low-priority notices together
    MONTHLY_DIGEST = "monthly_digest"  # last month's use per slot, with the insights the customer wants


# What a slot used far faster than others of its kind may need (insights), per device kind.
MAINTENANCE_HINTS = {
    "printer": "print-head cleaning runs and a nozzle check that repeats use ink too; a leaking or refilled "
    "cartridge shows this way. Worth a look at the printer's maintenance settings.",
    "fridge": "if nothing in the household changed, check where the sensor sits (a shelf that tilts reads low).",
}
MAINTENANCE_HINT_DEFAULT = "worth a look for a leak, a setting that doses more, or a sensor out of place."


class OrderFeedback(StrEnum):
    """Why the customer declined or cancelled an order: what the cycle's outcome records (outcomes)."""

    TOO_EARLY = "too_early"  # they will need it, later than it came
    NOT_NEEDED = "not_needed"  # they do not use it up, or get it elsewhere


class OrderStatus(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    PLACED = "placed"
    CONFIRMED = "confirmed"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    # Placed, then stopped by a consent change until the customer releases (approves) or cancels it.
    HELD = "held"


OPEN_ORDER_STATUSES = frozenset(
    {OrderStatus.AWAITING_APPROVAL, OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.HELD}
)
# Taken back before it shipped: it costs nothing, and a line of a shipment no longer in the box.
WITHDRAWN_ORDER_STATUSES = frozenset({OrderStatus.DECLINED, OrderStatus.CANCELLED})


class AlertKind(StrEnum):
    FALL = "fall"
    HELP_REQUESTED = "help_requested"
    # A wearable offline or with a flat battery for longer than its consent allows: it could not report a fall.
    SILENCE = "silence"


class AlertSeverity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"  # a silence incident: its carers are asked, not urgently


class AlarmKind(StrEnum):
    OFFLINE = "offline"
    BATTERY_LOW = "battery_low"
    STUCK_SENSOR = "stuck_sensor"


class AlarmSeverity(StrEnum):
    MAJOR = "major"
    WARNING = "warning"
    MINOR = "minor"


class AlarmStatus(StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CANCELLED = "cancelled"
    RESOLVED = "resolved"


class TargetKind(StrEnum):
    """Who one step of a safety incident's escalation asks."""

    CONTACT = "contact"
    EMERGENCY_SERVICES = "emergency_services"


class OutboxKind(StrEnum):
    # The lines of a shipment placed together, in one payload (an order from before shipments: order.placed).
    SHIPMENT_PLACED = "shipment.placed"
    ORDER_PLACED = "order.placed"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_HELD = "order.held"
    ORDER_RELEASED = "order.released"
    NOTIFICATION = "notification"
    DEVICE_COMMAND = "device.command"


# The probability a slot's delivery should arrive before it runs empty, unless the slot sets its own.
DEFAULT_SERVICE_LEVEL = 0.97
# Days added to a slot's lead time before it must be reordered (REPLENISH_REORDER_MARGIN_DAYS).
DEFAULT_REORDER_MARGIN_DAYS = 1.0
# When a slot orders, the customer's other slots that would order within this many days join its shipment
# (automation.consolidation). Chosen on every bench trace set (bench/README.md, "Shipments").
DEFAULT_PULL_FORWARD_DAYS = 14.0


class AccountRole(StrEnum):
    OPERATOR = "operator"
    CUSTOMER = "customer"


class HouseholdRole(StrEnum):
    """A customer account's place in its household (docs/api.md, "Households")."""

    OWNER = "owner"  # the account the customer signed up with: everything
    MEMBER = "member"  # sees the supplies and approves orders up to their limit; neither reads nor changes the consent
    CARER = "carer"  # sees only the devices shared with them (a wearable), their incidents and health; acknowledges


class Capability(StrEnum):
    """What a household role may do beyond seeing its devices. The value completes "a member may not ..."."""

    MANAGE_HOUSEHOLD = "manage the household's members"
    CHANGE_CONSENT = "change the consent"
    READ_CONSENT = "read the consent"
    MANAGE_DEVICES = "register devices or change their settings"
    ORDER = "approve, place or cancel orders"
    READ_MESSAGES = "read the household's messages"
    READ_AUDIT = "read the audit log"
    MANAGE_DATA = "export or delete the household's data"
    ACKNOWLEDGE = "acknowledge incidents and alarms"


ROLE_CAPABILITIES: dict[HouseholdRole, frozenset[Capability]] = {
    HouseholdRole.OWNER: frozenset(Capability),
    # The consent holds the wearer's contacts and the channels' addresses: the owner's to read.
    HouseholdRole.MEMBER: frozenset({Capability.ORDER, Capability.ACKNOWLEDGE}),
    HouseholdRole.CARER: frozenset({Capability.ACKNOWLEDGE}),
}
# An invitation's link works this long, once.
INVITATION_LINK_DAYS = 7
# Where the invitation's link leads (a page that asks the invited person for their name and password).
INVITATION_PAGE_PATH = "/app/invitations"
# Invitations' mails are deliveries of no notification row, as sign-ups' are.
INVITATION_NOTICE_PREFIX = "invitation:"
# Invitations a household may send in 24 hours, and to one address: beyond, 429 (nobody floods an inbox through us).
MAX_INVITATIONS_PER_DAY = 20
MAX_INVITATIONS_PER_ADDRESS_DAY = 3


class TokenKind(StrEnum):
    SESSION = "session"  # issued at sign-in, expires
    PERSONAL = "personal"  # created by its owner for a script or an app, works until revoked or expired


PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 256
# After this many failed sign-ins for one e-mail within the window, sign-in for it pauses until the window has
# passed: enough for typos, far too few for guessing.
MAX_FAILED_SIGN_INS = 10
FAILED_SIGN_IN_WINDOW_SECONDS = 15 * 60

# Bearer tokens start with this, so that secret scanners and people can tell one when they see it.
TOKEN_PREFIX = "rpl_"


class AuditAction(StrEnum):
    SIGN_IN = "auth.sign_in"
    SIGN_IN_FAILED = "auth.sign_in_failed"
    SIGN_OUT = "auth.sign_out"
    TOKEN_CREATED = "auth.token_created"
    TOKEN_REVOKED = "auth.token_revoked"
    ACCOUNT_CREATED = "auth.account_created"
    PASSWORD_CHANGED = "auth.password_changed"
    CONSENT_CHANGED = "consent.changed"
    DEVICE_REGISTERED = "device.registered"
    DEVICE_CREDENTIALS_ROTATED = "device.credentials_rotated"
    DECISION = "automation.decision"
    ORDER_STATUS = "order.status_changed"
    ORDER_NO_ANSWER = "order.no_answer"
    ORDER_LINK_USED = "order.link_used"
    ORDER_LINK_REFUSED = "order.link_refused"
    FULFILMENT_REFUSED = "order.fulfilment_refused"
    CUSTOMER_EXPORTED = "customer.exported"
    CUSTOMER_DELETED = "customer.deleted"
    PRODUCT_CHANGED = "catalogue.product_changed"
    ACCESS_DENIED = "auth.access_denied"
    MEMBER_INVITED = "household.member_invited"
    INVITATION_REVOKED = "household.invitation_revoked"
    MEMBER_JOINED = "household.member_joined"
    MEMBER_CHANGED = "household.member_changed"
    MEMBER_REMOVED = "household.member_removed"


# apprise services an emergency contact may be reached by. Those at a fixed public service (the URL carries a token,
# not a host) go as they are; those at a host the URL names (self-hosted servers, generic HTTP) must pass the
# webhooks' rule: no private network unless REPLENISH_WEBHOOK_ALLOW_PRIVATE_NETWORKS. Anything else (mailto with its
# own SMTP host, syslog, MQTT, ...) is refused: the platform would connect wherever the customer said.
APPRISE_SERVICE_SCHEMES = frozenset(
    {"tgram", "slack", "discord", "msteams", "pover", "pbul", "line", "twist", "zulip", "ifttt", "join", "spush"}
)
APPRISE_HOSTED_SCHEMES = frozenset(
    {
        "json",
        "jsons",
        "xml",
        "xmls",
        "form",
        "forms",
        "ntfy",
        "ntfys",
        "gotify",
        "gotifys",
        "matrix",
        "matrixs",
        "mmost",
        "mmosts",
        "rocket",
        "rockets",
        "signal",
        "signals",
        "nctalk",
        "nctalks",
    }
)
# A safety message's map link for the wearer's position (an OpenStreetMap page with a marker, zoomed to the street).
MAP_LINK = (
    "https://www.openstreetmap.org/?mlat={latitude:.6f}&mlon={longitude:.6f}#map=18/{latitude:.6f}/{longitude:.6f}"
)
# Where an emergency contact's acknowledgement link points (a page outside /api/v1, for a phone's browser).
ACKNOWLEDGE_PAGE_PATH = "/ack"
# Where a customer's one-tap order links point (approve, decline, cancel): a confirmation page, then the action.
ANSWER_PAGE_PATH = "/answer"
# Where the link that confirms a sign-up's e-mail address leads, and how long it works.
SIGN_UP_PAGE_PATH = "/app/sign-up"
SIGN_UP_LINK_HOURS = 24
# Live sign-up links per address at most: beyond, a sign-up mails nothing (and answers the same).
MAX_LIVE_SIGN_UPS = 3
# The mails of a sign-up are deliveries of no notification row: their ids start so (retention finds them by it).
SIGN_UP_NOTICE_PREFIX = "sign-up:"


# Readiness: the broker check connects with this timeout, and its answer is reused for this long, so that a storm of
# probes (several orchestrators, many API replicas' load balancer) costs the broker one connection per interval.
READINESS_BROKER_TIMEOUT_SECONDS = 2.0
READINESS_CACHE_SECONDS = 2.0
# Client ids of the readiness probe's MQTT connections start with this (and "replenish", as the service account's
# must), so that they are easy to spot in the broker's log.
READINESS_CLIENT_ID_PREFIX = "replenish-readyz"
