from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from replenish.constants import ConsentMode


class ConsentDocument(BaseModel):
    """What the customer lets the platform do. The most specific rule wins: slot, then device, then default."""

    model_config = ConfigDict(extra="forbid")

    default_mode: ConsentMode = Field(
        ConsentMode.ASK_FIRST, description="Mode for every slot without a more specific rule."
    )
    device_modes: dict[str, ConsentMode] = Field(
        default_factory=dict, description="Per device: device id → mode.", examples=[{"printer-1": "auto_order"}]
    )
    slot_modes: dict[str, ConsentMode] = Field(
        default_factory=dict,
        description="Per slot: 'device_id/slot_name' → mode.",
        examples=[{"fridge-1/milk": "notify_only"}],
    )


class ConsentRead(BaseModel):
    customer_id: str
    version: int
    created_at: datetime
    created_by: str
    document: ConsentDocument


class ConsentUpdate(ConsentDocument):
    """The whole new consent document; it becomes the next version."""
