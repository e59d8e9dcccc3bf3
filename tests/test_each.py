"""Jobs that work through items one transaction each (replenish.each.EachAlone): one that fails holds up no other, is
rolled back, is logged once with its traceback until it succeeds again, and an expected clash is one warning line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from replenish.consent.schemas import ConsentDocument
from replenish.customers import service as customers
from replenish.customers.models import Customer
from replenish.each import EachAlone
from replenish.errors import Conflict

NOW = datetime(2026, 12, 7, tzinfo=UTC)
log = logging.getLogger("test_each")


def add_customer(*, session: Session, name: str) -> str:
    return customers.create(
        session=session, name=name, email=f"{name}@example.com", consent_document=ConsentDocument(), actor="test",
        now=NOW,
    ).id  # fmt: skip


def test_a_failing_item_is_rolled_back_and_the_others_go_on(engine: Engine) -> None:
    each = EachAlone("import of", log=log)

    def broken(*, session: Session) -> str:
        add_customer(session=session, name="half")
        raise RuntimeError("the item's own fault")

    results = [each.run(engine, name, partial(add_customer, name=name)) for name in ("ada", "bea")]
    failed = each.run(engine, "half", broken)
    results.append(each.run(engine, "cy", partial(add_customer, name="cy")))
    assert failed.failed and failed.value is None
    assert all(not outcome.failed and outcome.value for outcome in results)
    with Session(engine) as session:
        assert sorted(session.exec(select(Customer.name))) == ["ada", "bea", "cy"]  # "half" rolled back
    assert each.failing == {"half"}


def test_a_failure_is_logged_once_until_the_item_succeeds_again(engine: Engine, caplog: pytest.LogCaptureFixture):
    each = EachAlone("import of", log=log)
    attempts = iter([RuntimeError("down"), RuntimeError("still down"), None])

    def flaky(*, session: Session) -> str:
        error = next(attempts)
        if error is not None:
            raise error
        return add_customer(session=session, name="ada")

    with caplog.at_level(logging.DEBUG, logger="test_each"):
        for _ in range(3):
            each.run(engine, "ada", flaky)
    levels = [(record.levelname, record.exc_info is not None) for record in caplog.records]
    assert levels == [("ERROR", True), ("DEBUG", True), ("INFO", False)]
    assert "succeeded again" in caplog.records[-1].getMessage()
    assert each.failing == frozenset()


def test_an_expected_clash_is_one_warning_line_and_not_failing(engine: Engine, caplog: pytest.LogCaptureFixture):
    each = EachAlone("import of", log=log, expected=(Conflict,))
    each.run(engine, "ada", partial(add_customer, name="ada"))
    with caplog.at_level(logging.INFO, logger="test_each"):
        clash = each.run(engine, "ada again", partial(add_customer, name="ada"))  # the same e-mail address
    assert clash.failed
    assert [(record.levelname, record.exc_info) for record in caplog.records] == [("WARNING", None)]
    assert "Conflict" in caplog.records[0].getMessage()
    assert each.failing == frozenset()


def test_items_a_pass_did_not_run_are_forgotten(engine: Engine) -> None:
    each = EachAlone("import of", log=log)

    def broken(*, session: Session) -> None:
        raise RuntimeError("down")

    each.run(engine, "ada", broken)
    each.run(engine, "bea", broken)
    with each.one_pass():
        each.run(engine, "bea", broken)
        each.run(engine, "cy", partial(add_customer, name="cy"))
    assert each.failing == {"bea"}
