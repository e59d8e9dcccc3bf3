"""A fleet of simulated devices: N printers, M fridges and K wearables, each its own MQTT client.

Every device runs in its own thread with its own paho client and publishes exactly what the
single-device simulators (printer.py, fridge.py, wearable.py) publish. Device ids are
``{prefix}-printer-0001``, ``{prefix}-fridge-0001``, ``{prefix}-wearable-0001``, ...; device number n
(counting all kinds) gets the seed ``seed * 100000 + n``, so a fleet is reproducible.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

import httpx

from replenish.simulation.devices import DeviceModel, FridgeModel, PrinterModel, WearableModel
from replenish.simulation.runner import (
    CliOptions,
    add_common_arguments,
    parse_common,
    register_if_asked,
    run_device,
    stop_on_signals,
)

log = logging.getLogger("fleet")


def build_fleet(options: CliOptions, printers: int, fridges: int, wearables: int, prefix: str) -> list[DeviceModel]:
    kinds: list[tuple[str, type[DeviceModel], int]] = [
        ("printer", PrinterModel, printers),
        ("fridge", FridgeModel, fridges),
        ("wearable", WearableModel, wearables),
    ]
    models: list[DeviceModel] = []
    for kind, model_class, count in kinds:
        for i in range(1, count + 1):
            extra: dict[str, Any] = {}
            if options.report_interval is not None:
                extra["report_interval"] = options.report_interval
            seed = options.seed * 100_000 + len(models)
            models.append(model_class(f"{prefix}-{kind}-{i:04d}", start=options.start, seed=seed, **extra))
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--printers", type=int, default=3, help="number of printers (default 3)")
    parser.add_argument("--fridges", type=int, default=2, help="number of fridges (default 2)")
    parser.add_argument("--wearables", type=int, default=1, help="number of wearables (default 1)")
    parser.add_argument("--prefix", default="sim", help="device id prefix (default sim)")
    add_common_arguments(parser, interval_minutes=None)
    options = parse_common(parser, argv)
    args = options.args
    if min(args.printers, args.fridges, args.wearables) < 0:
        parser.error("device counts cannot be negative")
    try:
        models = build_fleet(options, args.printers, args.fridges, args.wearables, args.prefix)
    except ValueError as exc:  # e.g. a prefix that makes invalid device ids
        parser.error(str(exc))
    if not models:
        parser.error("no devices: use --printers, --fridges or --wearables")

    try:
        endpoints = register_if_asked(options, models)
    except httpx.HTTPError as exc:
        log.error("registering the fleet failed: %s", exc)
        return 1
    stop = stop_on_signals()
    published: dict[str, int] = {}
    failed: list[str] = []

    def run(model: DeviceModel) -> None:
        try:
            published[model.device_id] = run_device(
                model,
                endpoints[model.device_id],
                speed=options.speed,
                catch_up=options.catch_up,
                duration=options.duration,
                stop=stop,
                keep_until_stored=options.keep_until_stored,
            )
        except Exception:
            log.exception("%s failed", model.device_id)
            failed.append(model.device_id)

    threads = [threading.Thread(target=run, args=(m,), name=m.device_id, daemon=True) for m in models]
    log.info("starting %d device(s) against %s", len(threads), options.endpoint.url)
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # join in slices so Ctrl-C (which sets stop) is handled promptly
            thread.join(0.5)
    log.info("%d message(s) published by %d device(s)", sum(published.values()), len(published))
    if failed:
        log.error("%d device(s) failed: %s", len(failed), ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
