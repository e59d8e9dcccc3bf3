from __future__ import annotations

from fastapi import APIRouter

from replenish.api.deps import CurrentOperator, CurrentPrincipal, Limit, ReadSession
from replenish.devices import service as devices
from replenish.outcomes import service
from replenish.outcomes.schemas import OutcomeRead, ReliabilityRead

router = APIRouter(tags=["outcomes"])


@router.get(
    "/devices/{device_id}/slots/{slot_name}/outcomes",
    response_model=list[OutcomeRead],
    summary="How a slot's decided cycles ended against their forecasts, newest first",
)
def slot_outcomes(
    device_id: str, slot_name: str, session: ReadSession, principal: CurrentPrincipal, limit: Limit = 20
) -> list[OutcomeRead]:
    """One per decided cycle that a refill ended: the forecast the decision was made on, the order, and what
    happened (ran out and for how long, or refilled with how many days left)."""
    devices.get(
        session=session,
        device_id=device_id,
        customer_id=principal.visible_customer,
        device_ids=principal.visible_devices,
    )
    slot = devices.get_slot(session=session, device_id=device_id, slot_name=slot_name)
    found = service.list_for_slots(session=session, slot_ids=[slot.id], per_slot=limit).get(slot.id, [])
    return [OutcomeRead.model_validate(row) for row in found]


@router.get("/reliability", response_model=list[ReliabilityRead], summary="Forecasts against outcomes, per device kind")
def reliability(session: ReadSession, operator: CurrentOperator) -> list[ReliabilityRead]:
    """Operators: for each device kind, the stated probability of running out before the early date against the
    observed frequency, over the decided cycles that ended in the last 90 days, as the hourly insights job last
    computed it."""
    rows, _ = service.kept_reliability(session=session)
    return [ReliabilityRead.model_validate(row) for row in rows]
