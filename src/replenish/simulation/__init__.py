"""Device simulators: pure models (``devices``) and the MQTT client that plays them (``runner``)."""

from replenish.simulation.devices import (
    DeviceModel,
    FridgeModel,
    PrinterModel,
    SimMessage,
    SlotSpec,
    WearableModel,
)

__all__ = ["DeviceModel", "FridgeModel", "PrinterModel", "SimMessage", "SlotSpec", "WearableModel"]
