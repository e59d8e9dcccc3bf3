"""The health job: every device judged and its alarms brought in line, a page of devices per transaction, so that
a page that fails does not hold up the rest of the fleet."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from replenish.devices.models import Device
from replenish.each import EachAlone
from replenish.health import service
from replenish.health.rules import HealthPolicy
from replenish.health.service import HealthReport

log = logging.getLogger(__name__)

PAGE = 500  # devices per transaction

_PAGES = EachAlone("health check of devices", log=log)


def assess_fleet(*, engine: Engine, now: datetime, policy: HealthPolicy) -> HealthReport:
    with Session(engine) as session:
        device_ids = list(session.exec(select(Device.id).order_by(col(Device.id))))
    report = HealthReport()
    with _PAGES.one_pass():
        for start in range(0, len(device_ids), PAGE):
            page_ids = device_ids[start : start + PAGE]
            check = partial(service.assess_devices, device_ids=page_ids, now=now, policy=policy)
            page = _PAGES.run(engine, f"{page_ids[0]}..{page_ids[-1]}", check).value
            if page is None:
                continue
            report.devices += page.devices
            report.raised += page.raised
            report.cleared += page.cleared
    return report
