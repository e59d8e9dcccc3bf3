"""Simulated ink-jet printer: reports its four ink levels (black, cyan, magenta, yellow) over MQTT.

Publishes ``devices/{id}/telemetry`` {"seq", "ts", "levels": {slot: fraction}} every --interval-minutes
of simulated time, and "online"/"offline" on the retained ``devices/{id}/status`` (last will "offline").
"""

from __future__ import annotations

import argparse
import sys

from replenish.simulation.devices import PrinterModel
from replenish.simulation.runner import add_common_arguments, parse_common, parse_slot_values, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-id", default="printer-0001", help="device id (default printer-0001)")
    add_common_arguments(parser, interval_minutes=60)
    parser.add_argument(
        "--level",
        action="append",
        metavar="SLOT=FRACTION",
        help="initial ink level of a slot, repeatable (default: random between 0.35 and 1)",
    )
    parser.add_argument(
        "--daily-usage",
        action="append",
        metavar="SLOT=FRACTION",
        help="average ink used per day, repeatable (default black=0.04 cyan=0.02 magenta=0.018 yellow=0.022)",
    )
    options = parse_common(parser, argv)
    try:
        model = PrinterModel(
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
