"""Simulated ink-jet printer: reports its four ink levels (black, cyan, magenta, yellow) over MQTT.

Publishes ``devices/{id}/telemetry`` {"seq", "ts", "levels": {slot: fraction}} every --interval-minutes
of simulated time, and "online"/"offline" on the retained ``devices/{id}/status`` (last will "offline").
"""

from __future__ import annotations

import sys

from replenish.simulation.devices import PrinterModel
from replenish.simulation.runner import consumable_main


def main(argv: list[str] | None = None) -> int:
    return consumable_main(
        PrinterModel,
        description=__doc__ or "",
        default_device_id="printer-0001",
        level_help="initial ink level of a slot, repeatable (default: random between 0.35 and 1)",
        usage_help="average ink used per day, repeatable (default black=0.04 cyan=0.02 magenta=0.018 yellow=0.022)",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
