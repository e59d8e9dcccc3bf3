"""Simulated fall-detection wearable: fall events, "I'm OK" cancellations, the help button and battery over MQTT.

Publishes ``devices/{id}/events`` {"seq", "ts", "type": "fall_detected", "confidence"} at the chosen
simulated moment, "fall_cancelled" if asked, "help_requested" if asked, each with "location" when given
(--room, or --latitude and --longitude with --accuracy), "battery_low" {"battery"} once the battery drops below 0.2,
a heartbeat ``devices/{id}/telemetry`` {"seq", "ts", "levels": {}, "battery"} every --interval-minutes,
and "online"/"offline" on the retained ``devices/{id}/status`` (last will "offline"). It logs each command the
platform sends on ``devices/{id}/commands``: "alert_acknowledged" means someone has the wearer's alert in hand.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from replenish.simulation.devices import WearableModel
from replenish.simulation.runner import add_common_arguments, parse_common, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-id", default="wearable-0001", help="device id (default wearable-0001)")
    add_common_arguments(parser, interval_minutes=15)
    parser.add_argument(
        "--fall-after-seconds",
        type=float,
        default=None,
        help="simulated seconds after the start at which the wearer falls (default: no fall)",
    )
    parser.add_argument(
        "--cancel-after-seconds",
        type=float,
        default=None,
        help='simulated seconds after the fall at which the wearer presses "I\'m OK" (default: never)',
    )
    parser.add_argument(
        "--help-after-seconds",
        type=float,
        default=None,
        help="simulated seconds after the start at which the wearer presses the help button (default: never)",
    )
    parser.add_argument("--room", default=None, help='where the wearer is, as the device knows it (e.g. "bathroom")')
    parser.add_argument("--latitude", type=float, default=None, help="the wearer's position: latitude (-90..90)")
    parser.add_argument("--longitude", type=float, default=None, help="the wearer's position: longitude (-180..180)")
    parser.add_argument("--accuracy", type=float, default=None, help="the position's accuracy in metres")
    parser.add_argument("--battery", type=float, default=1.0, help="initial battery 0..1 (default 1)")
    parser.add_argument("--battery-drain-per-day", type=float, default=0.05, help="battery used per day (default 0.05)")
    options = parse_common(parser, argv)
    args = options.args
    if args.cancel_after_seconds is not None and args.fall_after_seconds is None:
        parser.error("--cancel-after-seconds needs --fall-after-seconds")
    if (args.latitude is None) != (args.longitude is None):
        parser.error("--latitude and --longitude come together")
    location = {
        key: value
        for key, value in (
            ("latitude", args.latitude),
            ("longitude", args.longitude),
            ("accuracy", args.accuracy),
            ("room", args.room),
        )
        if value is not None
    }
    try:
        model = WearableModel(
            args.device_id,
            start=options.start,
            seed=options.seed,
            report_interval=options.report_interval,
            fall_at=None
            if args.fall_after_seconds is None
            else options.start + timedelta(seconds=args.fall_after_seconds),
            cancel_after=None if args.cancel_after_seconds is None else timedelta(seconds=args.cancel_after_seconds),
            help_at=None
            if args.help_after_seconds is None
            else options.start + timedelta(seconds=args.help_after_seconds),
            location=location or None,
            battery=args.battery,
            battery_drain_per_day=args.battery_drain_per_day,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return run_cli(model, options)


if __name__ == "__main__":
    sys.exit(main())
