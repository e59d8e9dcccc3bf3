"""Bad input at volume (issue 7): random bytes, wrong shapes and types, oversize payloads, odd unicode and foreign
topics, interleaved with good telemetry, through a real broker into the real database. The ingestor never stops,
each bad message becomes one dead letter with its raw bytes and the reason it broke, every good one is stored once.

What reaches the ingestor is what its subscriptions match: devices/+/telemetry, devices/+/events, devices/+/status.
Anything else (an extra topic level, another channel, another prefix) is published too, to show it changes nothing,
but is never counted: the broker does not deliver it. Topics that are not UTF-8 cannot be published with paho at all
(and Mosquitto disconnects a client that sends one), so they are not generated.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, func, select

from replenish.clock import ManualClock
from replenish.constants import DEAD_LETTER_KEEP_BYTES, MAX_PAYLOAD_BYTES
from replenish.ingest.models import DeadLetter, DeviceMessage, Reading
from replenish.runtime import Platform, Roles
from support.api import INK_SLOTS, api_client, create_customer, operator_token, register_device
from support.brokers import SERVICE_PASSWORD, PostgresRun, running_mosquitto, write_auth_files
from support.mqtt import Publisher
from support.platform import make_settings, running_platform

DEVICE = "printer-1"
SLOTS = [slot["name"] for slot in INK_SLOTS]
WAIT = 20.0
UNBOUNDED = 10**9  # dead letters an hour: as many as the test sends

# The reason a dead letter must give, by what broke (docs/mqtt.md, "Rules").
REASONS = {
    "device_id": r"^device_id .* does not match",
    "unknown_device": r"^unknown device ",
    "oversize": rf"^payload of \d+ bytes exceeds {MAX_PAYLOAD_BYTES}$",
    "not_utf8": r"^payload is not UTF-8$",
    "not_json": r"^payload is not JSON: ",
    "not_object": r"^payload must be a JSON object, got ",
    "unstorable": r"^payload cannot be stored: ",
    "invalid_telemetry": r"^invalid telemetry payload: (seq|ts|levels)",
    "invalid_events": r"^invalid events payload: (seq|ts|type|confidence|battery)",
    "unknown_slot": rf"^unknown slot .* for device '{DEVICE}'$",
    "out_of_range": r"^level .* of slot '(black|cyan|magenta|yellow)' is outside 0\.\.1 fraction$",
    "status": r'^status (is not JSON|must be "online" or "offline")',
}


@dataclass(frozen=True)
class Bad:
    topic: str
    payload: bytes
    reason: str  # a key of REASONS


@dataclass(frozen=True)
class Good:
    """A telemetry message of the registered device; its seq is given when it is sent (examples are replayed)."""

    document: dict[str, Any]
    ascii_only: bool


@dataclass(frozen=True)
class Foreign:
    """A topic the ingestor does not subscribe to."""

    topic: str
    payload: bytes


# -- strategies -------------------------------------------------------------------------------------------------------

# Text a database keeps: any UTF-8 (emoji, right-to-left marks, combining marks), no U+0000.
storable_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
odd_text = st.sampled_from(
    ["\u200f", "\u202e", "\u200d", "😀", "👩‍👩‍👧", "שלום", "مرحبا", "e\u0301", "\ufeff", "\uffff"]
)
storable_key = st.one_of(storable_text, odd_text).filter(lambda key: key not in {"seq", "ts", "levels", "battery"})
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False)
)
storable_json = st.recursive(
    st.one_of(json_scalars, storable_text, odd_text),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(storable_key, children, max_size=3),
    max_leaves=8,
)
ts_values = st.one_of(
    st.just(None),
    st.sampled_from(["2026-11-02T07:00:00Z", "2026-11-02T12:30:00+05:30", "2026-11-01T23:00:00-08:00"]),
    st.integers(946684800, 4102444800),  # epoch seconds, 2000..2100
)
levels = st.dictionaries(st.sampled_from(SLOTS), st.floats(0, 1), max_size=4)


@st.composite
def goods(draw: st.DrawFn) -> Good:
    document: dict[str, Any] = {"levels": draw(levels)}
    ts = draw(ts_values)
    if ts is not None:
        document["ts"] = ts
    # Extra fields are kept with the message: odd but storable unicode in keys and values must come back as sent.
    document.update(draw(st.dictionaries(storable_key, storable_json, max_size=3)))
    return Good(document, ascii_only=draw(st.booleans()))


def telemetry(**fields: Any) -> dict[str, Any]:
    return {"seq": 1, "levels": {"black": 0.5}} | fields


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


own = f"devices/{DEVICE}"
not_integers = st.one_of(
    storable_text,
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
seq_wrong = st.one_of(not_integers, st.integers(max_value=-1), st.integers(min_value=2**63, max_value=2**80))
ts_wrong = st.one_of(
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.integers(max_value=946684799),
    st.integers(min_value=4102444801, max_value=2**62),
    st.sampled_from(["yesterday", "2026-11-02T08:00:00", "2026-13-02T08:00:00Z", "0001-01-01T00:00:00+01:00"]),
)
levels_wrong = st.one_of(
    storable_text,
    st.lists(st.floats(0, 1), max_size=2),
    st.integers(0, 1),
    st.none(),
    st.dictionaries(st.sampled_from(SLOTS), st.one_of(storable_text, st.booleans(), st.none()), min_size=1),
)


def wrong_field(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Bad]:
    return values.map(lambda value: Bad(f"{own}/telemetry", encoded(telemetry(**{field: value})), "invalid_telemetry"))


def as_json_numbers(document: Any) -> Any:
    """A document with its numbers as exact decimals: PostgreSQL's JSONB keeps a number's decimal value, so a float
    like 2.986060324892647e+16 (as Python parsed the device's text) reads back as the integer 29860603248926470,
    the same JSON number."""
    return json.loads(json.dumps(document), parse_float=Decimal, parse_int=Decimal)


def invalid_utf8(data: bytes, position: int, junk: bytes) -> bytes:
    position = min(position, len(data))
    return data[:position] + junk + data[position:]


def is_utf8(raw: bytes) -> bool:
    """Junk can complete a sequence the random bytes began (b"\xe1\x80" + b"\x80" is U+1000)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def padded(size: int) -> bytes:
    head = encoded(telemetry())[:-1] + b', "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


bad_payloads = st.one_of(
    # Random bytes that are not UTF-8: a lone continuation byte, a truncated sequence, an overlong or a surrogate.
    st.builds(
        invalid_utf8,
        st.binary(max_size=200),
        st.integers(0, 200),
        st.sampled_from([b"\x80", b"\xff", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80"]),
    )
    .filter(lambda raw: not is_utf8(raw))
    .map(lambda raw: Bad(f"{own}/telemetry", raw, "not_utf8")),
    # Not JSON: text that cannot start a JSON value, cut-off objects, NaN/Infinity, a raw NUL inside a string.
    st.text(max_size=50).map(lambda text: Bad(f"{own}/telemetry", ("x" + text).encode(), "not_json")),
    goods().map(lambda good: Bad(f"{own}/telemetry", encoded(telemetry() | good.document)[:-1], "not_json")),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(
        lambda literal: Bad(f"{own}/telemetry", b'{"seq": 1, "levels": {"black": %s}}' % literal.encode(), "not_json")
    ),
    st.just(Bad(f"{own}/telemetry", b'{"seq": 1, "levels": {}, "note": "a\x00b"}', "not_json")),
    # Valid JSON of the wrong shape.
    st.one_of(json_scalars, storable_text, st.lists(storable_json, max_size=4)).map(
        lambda document: Bad(f"{own}/telemetry", encoded(document), "not_object")
    ),
    # Wrong types and missing fields.
    wrong_field("seq", seq_wrong),
    wrong_field("ts", ts_wrong),
    wrong_field("levels", levels_wrong),
    st.sampled_from(["seq", "levels"]).map(
        lambda field: Bad(
            f"{own}/telemetry", encoded({k: v for k, v in telemetry().items() if k != field}), "invalid_telemetry"
        )
    ),
    # Levels out of range, huge numbers, unknown slots (odd unicode in their names too).
    st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False), st.floats(1.000001, 1e308)).map(
        lambda level: Bad(f"{own}/telemetry", encoded(telemetry(levels={"cyan": level})), "out_of_range")
    ),
    st.sampled_from([b"1e400", b"-1e400", b"1" + b"0" * 5000]).map(
        lambda number: Bad(f"{own}/telemetry", b'{"seq": 1, "levels": {"black": %s}}' % number, "unstorable")
    ),
    st.one_of(storable_text, odd_text)
    .filter(lambda name: name not in SLOTS)
    .map(lambda name: Bad(f"{own}/telemetry", encoded(telemetry(levels={"black": 0.5, name: 0.5})), "unknown_slot")),
    # Over the contract's 16 KiB: valid telemetry padded past it, and far past it.
    st.integers(MAX_PAYLOAD_BYTES + 1, 3 * MAX_PAYLOAD_BYTES).map(
        lambda size: Bad(f"{own}/telemetry", padded(size), "oversize")
    ),
    # Odd unicode no database keeps: U+0000 and unpaired surrogates, escaped, in keys and in values.
    st.tuples(st.sampled_from(["\\u0000", "\\ud800", "\\udfff", "\\ud83d"]), st.booleans()).map(
        lambda odd: Bad(
            f"{own}/telemetry",
            (b'{"seq": 1, "levels": {}, "%s": 1}' if odd[1] else b'{"seq": 1, "levels": {}, "note": "%s"}')
            % odd[0].encode(),
            "unstorable",
        )
    ),
    st.integers(33, 2000).map(
        lambda depth: Bad(
            f"{own}/telemetry", b'{"seq": 1, "levels": {}, "x": ' + b"[" * depth + b"]" * depth + b"}", "unstorable"
        )
    ),
    # The events and status channels of the same device.
    st.one_of(
        st.just({"seq": 1}),
        st.just({"seq": 1, "type": ""}),
        st.just({"seq": 1, "type": "x" * 257}),
        st.floats(1.01, 10).map(lambda c: {"seq": 1, "type": "fall_detected", "confidence": c}),
        st.one_of(st.integers(), st.booleans(), st.none()).map(lambda t: {"seq": 1, "type": t}),
    ).map(lambda document: Bad(f"{own}/events", encoded(document), "invalid_events")),
    st.one_of(storable_json.filter(lambda value: value not in ("online", "offline")), st.just("ONLINE"))
    .map(encoded)
    .map(lambda raw: Bad(f"{own}/status", raw, "status")),
    st.sampled_from([b"online", b"offline"]).map(lambda raw: Bad(f"{own}/status", raw, "status")),
    st.just(Bad(f"{own}/status", b'"\xffonline"', "not_utf8")),
)

# Device ids the contract refuses, as a topic level the subscriptions still match ('+' matches any one level, even an
# empty one). No '/', '+' or '#': those are not one level, or not publishable.
bad_device_ids = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/+#"), min_size=1, max_size=20).filter(
        lambda device_id: re.fullmatch(r"[A-Za-z0-9_-]{1,64}", device_id) is None
    ),
    st.sampled_from(["", "bad.id", "a b", "\u202eevil", "😀", "printer-1\u200f", "a\x00b", "\x00", "tab\there"]),
    st.integers(65, 300).map(lambda n: "x" * n),
)
unknown_device_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).filter(lambda d: d != DEVICE)
channels = st.sampled_from(["telemetry", "events", "status"])

bad_messages = st.one_of(
    bad_payloads,
    st.builds(
        lambda device_id, channel, payload: Bad(f"devices/{device_id}/{channel}", payload, "device_id"),
        bad_device_ids,
        channels,
        st.one_of(st.binary(max_size=50), st.just(encoded(telemetry()))),
    ),
    st.builds(
        lambda device_id, good: Bad(f"devices/{device_id}/telemetry", encoded(telemetry() | good), "unknown_device"),
        unknown_device_ids,
        levels.map(lambda chosen: {"levels": chosen}),
    ),
)

foreign_messages = st.builds(
    Foreign,
    st.sampled_from(
        [
            f"{own}/telemetry/extra",
            "devices/other-device/commands",
            "devices/other-device/unknown",
            f"{own}",
            f"devices/{DEVICE}/status/",
            "sensors/printer-1/telemetry",
            "devices",
            "/devices/printer-1/telemetry",
            "Devices/printer-1/telemetry",
        ]
    ),
    st.binary(max_size=20),
)


@st.composite
def sequences(draw: st.DrawFn) -> list[Good | Bad | Foreign]:
    items: list[Good | Bad | Foreign] = [
        *draw(st.lists(goods(), min_size=1, max_size=8)),
        *draw(st.lists(bad_messages, min_size=1, max_size=12)),
        *draw(st.lists(foreign_messages, max_size=2)),
    ]
    return draw(st.permutations(items))


# -- the run ----------------------------------------------------------------------------------------------------------


def expected_topic(topic: str) -> str:
    """How a dead letter shows its topic: U+0000 (which MQTT forbids in topics) replaced, as PostgreSQL needs."""
    return topic[:1024].replace("\x00", "\ufffd")


class Run:
    """Sends sequences through the broker and checks each against the database."""

    def __init__(self, platform: Platform, publisher: Publisher) -> None:
        self.platform = platform
        self.publisher = publisher
        self.seqs = itertools.count(1)
        self.handled = 0
        self.last_letter = 0
        self.goods = 0

    def send(self, items: list[Good | Bad | Foreign]) -> None:
        # Counted from what the platform holds now, so that an example replayed after a failure (hypothesis shrinking
        # it) is judged on its own.
        self.handled = self.platform.ingestor.totals.handled
        with Session(self.platform.engine) as session:
            self.last_letter = session.exec(select(func.max(DeadLetter.id))).one() or 0
        sent: dict[int, dict[str, Any]] = {}
        bads: list[Bad] = []
        for item in items:
            if isinstance(item, Good):
                seq = next(self.seqs)
                document = {"seq": seq, **item.document}
                sent[seq] = document
                self.publisher.send(f"{own}/telemetry", json.dumps(document, ensure_ascii=item.ascii_only).encode())
            else:
                self.publisher.send(item.topic, item.payload)
                if isinstance(item, Bad):
                    bads.append(item)
        before = self.handled
        self.handled += len(sent) + len(bads)
        assert self.platform.ingestor.wait_for(handled=self.handled, timeout=WAIT), (
            f"the ingestor handled {self.platform.ingestor.totals.handled - before} of "
            f"{self.handled - before} messages: it stopped or lost some"
        )
        self.check_goods(sent)
        self.check_bads(bads)
        self.goods += len(sent)

    def check_goods(self, sent: dict[int, dict[str, Any]]) -> None:
        with Session(self.platform.engine) as session:
            rows = session.exec(
                select(DeviceMessage).where(DeviceMessage.device_id == DEVICE, col(DeviceMessage.seq).in_(sent))
            ).all()
            assert Counter(row.seq for row in rows) == Counter(list(sent)), "each good message stored exactly once"
            for row in rows:
                assert as_json_numbers(row.payload) == as_json_numbers(sent[row.seq]), "keeps what the device sent"
                readings = session.exec(select(Reading).where(Reading.message_id == row.id)).all()
                assert sorted(r.level for r in readings) == sorted(sent[row.seq]["levels"].values())

    def check_bads(self, bads: list[Bad]) -> None:
        with Session(self.platform.engine) as session:
            letters = session.exec(
                select(DeadLetter).where(col(DeadLetter.id) > self.last_letter).order_by(col(DeadLetter.id))
            ).all()
        assert len(letters) == len(bads), [(letter.topic, letter.reason) for letter in letters]
        unmatched = list(letters)
        for bad in bads:
            match = next(
                (
                    letter
                    for letter in unmatched
                    if letter.topic == expected_topic(bad.topic)
                    and letter.payload == bad.payload[:DEAD_LETTER_KEEP_BYTES]
                ),
                None,
            )
            assert match is not None, f"no dead letter keeps the exact bytes of {bad}"
            unmatched.remove(match)
            assert match.payload_size == len(bad.payload)
            assert re.search(REASONS[bad.reason], match.reason), (bad.reason, match.reason, bad.payload[:200])

    def still_storing(self) -> None:
        """After everything, one more good message is stored: the ingestor is alive, not merely done."""
        self.send([Good({"levels": {"black": 0.25}}, ascii_only=True)])
        with Session(self.platform.engine) as session:
            total = session.exec(select(func.count()).select_from(DeviceMessage)).one()
        assert total == self.goods
        # Nothing else arrived late (a foreign topic the ingestor should never have seen, a message handled twice).
        time.sleep(0.3)
        totals = self.platform.ingestor.totals
        assert (totals.duplicates, totals.status_updates, totals.handled) == (0, 0, self.handled), totals


def run_property(run: Run, *, max_examples: int, mosquitto: bool) -> None:
    """``max_examples`` comes from the loaded hypothesis profile (tests/conftest.py): fewer in make test, many more in
    a thorough run."""
    messages = sequences()
    if mosquitto:
        messages = messages.filter(lambda items: not any(_mosquitto_refuses(item) for item in items))

    # print_blob: a failure in CI prints the @reproduce_failure line that replays it anywhere.
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
        print_blob=True,
    )
    @given(messages)
    def property_(items: list[Good | Bad | Foreign]) -> None:
        run.send(items)

    property_()
    run.still_storing()


def _mosquitto_refuses(item: Good | Bad | Foreign) -> bool:
    """Mosquitto disconnects a client whose topic holds U+0000, another control character or a noncharacter."""
    if isinstance(item, Good):
        return False
    return any(
        ord(char) <= 0x1F or 0x7F <= ord(char) <= 0x9F or 0xFDD0 <= ord(char) <= 0xFDEF or ord(char) & 0xFFFE == 0xFFFE
        for char in item.topic
    )


# -- tests ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def registered(platform: Platform, api: httpx.Client) -> Platform:
    register_device(api, customer_id=create_customer(api), device_id=DEVICE)
    # Every bad message must be kept here: the hourly allowance of dead letters is tested in test_dead_letters.py.
    assert platform.ingestor is not None
    platform.ingestor.dead_letters_per_hour = UNBOUNDED
    return platform


@pytest.mark.slow
def test_bad_input_at_volume_on_the_embedded_broker(registered: Platform, publisher: Publisher) -> None:
    """amqtt also passes on topics with U+0000 and control characters (MQTT forbids or discourages them): they must
    not trouble the ingestor either."""
    run_property(Run(registered, publisher), max_examples=settings().max_examples, mosquitto=False)


@pytest.fixture
def on_mosquitto(
    tmp_path: Path, clock: ManualClock, postgres_server: PostgresRun
) -> Iterator[tuple[Platform, Publisher]]:
    """The production stack: Mosquitto and PostgreSQL (whose COPY path and JSONB see every random payload)."""
    database_url = postgres_server.create_migrated_database(f"bad_input_{uuid.uuid4().hex}")
    with running_mosquitto(tmp_path) as broker:
        settings_ = make_settings(
            tmp_path,
            mqtt_url=broker.url,
            broker_service_password=SERVICE_PASSWORD,
            database_url=database_url,
            dead_letters_per_device_hour=UNBOUNDED,
        )
        with running_platform(settings_, clock, roles=Roles(ingest=True, api=True)) as platform:
            with api_client(platform, operator_token(platform)) as api:
                register_device(api, customer_id=create_customer(api), device_id=DEVICE)
            write_auth_files(
                broker.auth_dir, service_password=SERVICE_PASSWORD, database_url=settings_.resolved_database_url
            )
            broker.reload()
            publisher = Publisher(settings_.mqtt_endpoint, device_port=broker.device_port)
            try:
                yield platform, publisher
            finally:
                publisher.close()


def test_bad_input_at_volume_on_mosquitto(on_mosquitto: tuple[Platform, Publisher]) -> None:
    """The production broker, with its production config (oversize payloads up to its packet limit reach the platform).
    Mosquitto disconnects a client whose topic holds U+0000, so none are sent here."""
    run_property(Run(*on_mosquitto), max_examples=settings().max_examples // 2, mosquitto=True)
