from __future__ import annotations

import base64
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from replenish.api.deps import CurrentOperator, Limit, Offset, ReadSession
from replenish.errors import NotFound
from replenish.ingest import service
from replenish.ingest.models import DeadLetter, DeadLetterOverflow

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])


class DeadLetterRead(BaseModel):
    """A refused message without its payload (GET /dead-letters/{id} has it): a list of them stays small however
    large what was sent."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    topic: str
    device_id: str | None
    reason: str
    received_at: datetime
    payload_size: int = Field(description="The payload's size as it was sent, in bytes.")


class DeadLetterDetail(DeadLetterRead):
    payload_kept: int = Field(description="How many bytes of the payload were kept: its first 4 KiB at most.")
    payload_text: str | None = Field(description="The kept bytes as text, when they are UTF-8.")
    payload_base64: str = Field(description="The kept bytes, base64.")


class OverflowRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sender: str = Field(description="The device id, or '(unregistered)' for every unregistered or unnamed sender.")
    hour: datetime
    dropped: int = Field(description="Refused messages not kept as dead letters: the sender's allowance was used up.")
    dropped_bytes: int
    last_at: datetime


@router.get("", response_model=list[DeadLetterRead], summary="Messages that did not fit the contract, newest first")
def list_dead_letters(
    session: ReadSession,
    operator: CurrentOperator,
    device_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[DeadLetterRead]:
    """Each with its topic, the reason it was refused and its size; GET /dead-letters/{id} gives its payload.
    Operators only: a dead letter may be anyone's."""
    rows = service.list_dead_letters(session=session, device_id=device_id, limit=limit, offset=offset)
    return [DeadLetterRead.model_validate(row) for row in rows]


@router.get(
    "/overflow",
    response_model=list[OverflowRead],
    summary="Refused messages counted but not kept, per sender and hour, newest first",
)
def list_overflow(
    session: ReadSession, operator: CurrentOperator, limit: Limit = 100, offset: Offset = 0
) -> list[OverflowRead]:
    rows = session.exec(
        select(DeadLetterOverflow)
        .order_by(col(DeadLetterOverflow.hour).desc(), col(DeadLetterOverflow.sender))
        .offset(offset)
        .limit(limit)
    )
    return [OverflowRead.model_validate(row) for row in rows]


@router.get("/{dead_letter_id}", response_model=DeadLetterDetail, summary="One dead letter with its payload")
def get_dead_letter(dead_letter_id: int, session: ReadSession, operator: CurrentOperator) -> DeadLetterDetail:
    """The payload as kept: its first 4 KiB at most (payload_size is what was sent)."""
    row = session.get(DeadLetter, dead_letter_id)
    if row is None:
        raise NotFound("dead letter", str(dead_letter_id))
    try:
        text: str | None = row.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DeadLetterDetail(
        **DeadLetterRead.model_validate(row).model_dump(),
        payload_kept=len(row.payload),
        payload_text=text,
        payload_base64=base64.b64encode(row.payload).decode("ascii"),
    )
