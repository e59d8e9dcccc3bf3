from __future__ import annotations

import base64
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from replenish.api.deps import CurrentOperator, Limit, Offset, ReadSession
from replenish.ingest import service

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])


class DeadLetterRead(BaseModel):
    id: int
    topic: str
    device_id: str | None
    reason: str
    received_at: datetime
    payload_size: int
    payload_text: str | None
    payload_base64: str


@router.get("", response_model=list[DeadLetterRead], summary="Messages that did not fit the contract, newest first")
def list_dead_letters(
    session: ReadSession,
    operator: CurrentOperator,
    device_id: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[DeadLetterRead]:
    """Each keeps its topic, raw bytes (base64; as text too when it is UTF-8) and the reason it was refused.
    Operators only: a dead letter may be anyone's."""
    rows = service.list_dead_letters(session=session, device_id=device_id, limit=limit, offset=offset)
    result = []
    for row in rows:
        try:
            text: str | None = row.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        result.append(
            DeadLetterRead(
                id=row.id or 0,
                topic=row.topic,
                device_id=row.device_id,
                reason=row.reason,
                received_at=row.received_at,
                payload_size=row.payload_size,
                payload_text=text,
                payload_base64=base64.b64encode(row.payload).decode("ascii"),
            )
        )
    return result
