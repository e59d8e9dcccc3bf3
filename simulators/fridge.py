"""Simulated smart fridge: reports milk (litres, up to 2) and eggs (count, up to 12) over MQTT.

Publishes ``devices/{id}/telemetry`` {"seq", "ts", "levels": {"milk": litres, "eggs": count}} every
--interval-minutes of simulated time, and "online"/"offline" on the retained ``devices/{id}/status``
(last will "offline"). Milk goes mostly at breakfast and in the evening, eggs one to three at a time.
"""

from __future__ import annotations

import sys

from replenish.simulation.devices import FridgeModel
from replenish.simulation.runner import consumable_main


def main(argv: list[str] | None = None) -> int:
    return consumable_main(
        FridgeModel,
        description=__doc__ or "",
        default_device_id="fridge-0001",
        level_help="initial amount: milk=LITRES or eggs=COUNT, repeatable (default: random, a third full or more)",
        usage_help="average used per day, repeatable (default milk=0.5 eggs=1.5)",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
