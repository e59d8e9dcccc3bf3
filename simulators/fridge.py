"""Simulated smart fridge: reports milk (litres, up to 2) and eggs (count, up to 12) over MQTT.

Publishes ``devices/{id}/telemetry`` {"seq", "ts", "levels": {"milk": litres, "eggs": count}} every
--interval-minutes of simulated time, and "online"/"offline" on the retained ``devices/{id}/status``
(last will "offline"). Milk goes mostly at breakfast and in the evening, eggs one to three at a time.
"""

from __future__ import annotations

import argparse
import sys

from replenish.simulation.devices import FridgeModel
from replenish.simulation.runner import add_common_arguments, parse_common, parse_slot_values, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-id", default="fridge-0001", help="device id (default fridge-0001)")
    add_common_arguments(parser, interval_minutes=60)
    parser.add_argument(
        "--level",
        action="append",
        metavar="SLOT=AMOUNT",
        help="initial amount: milk=LITRES or eggs=COUNT, repeatable (default: random, a third full or more)",
    )
    parser.add_argument(
        "--daily-usage",
        action="append",
        metavar="SLOT=AMOUNT",
        help="average used per day, repeatable (default milk=0.5 eggs=1.5)",
    )
    options = parse_common(parser, argv)
    try:
        model = FridgeModel(
            options.args.device_id,
            start=options.start,
            seed=options.seed,
            report_interval=options.report_interval,
            initial_levels=parse_slot_values(options.args.level),
            daily_usage=parse_slot_values(options.args.daily_usage),
        )
    except ValueError as exc:
        parser.error(str(exc))
    return run_cli(model, options)


if __name__ == "__main__":
    sys.exit(main())
