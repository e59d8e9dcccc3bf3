"""Register simulated devices with the platform, so that their telemetry is stored rather than dead-lettered."""

from __future__ import annotations

import logging

import httpx

from replenish.constants import DeviceKind
from replenish.devices.schemas import DeviceCreate, SlotCreate
from replenish.simulation.devices import DeviceModel
from replenish.tls import client_tls

log = logging.getLogger(__name__)

SIMULATOR_CUSTOMER_EMAIL = "simulators@replenish.example"
DEFAULT_LEAD_TIME_DAYS = 3.0
_SKUS = {
    "black": "INK-BLACK-XL",
    "cyan": "INK-CYAN",
    "magenta": "INK-MAGENTA",
    "yellow": "INK-YELLOW",
    "milk": "MILK-2L",
    "eggs": "EGGS-12",
}


def device_request(model: DeviceModel, *, customer_id: str) -> DeviceCreate:
    """The registration of a simulated device: exactly the slots it reports."""
    return DeviceCreate(
        id=model.device_id,
        customer_id=customer_id,
        kind=DeviceKind(model.kind),
        name=f"Simulated {model.kind} {model.device_id}",
        slots=[
            SlotCreate(
                name=spec.name,
                unit=spec.unit,
                capacity=spec.capacity,
                product_sku=_SKUS.get(spec.name, spec.name.upper()),
                lead_time_days=DEFAULT_LEAD_TIME_DAYS,
            )
            for spec in model.slots
        ],
    )


def register_over_api(
    api_url: str, models: list[DeviceModel], *, token: str, email: str = SIMULATOR_CUSTOMER_EMAIL
) -> dict[str, str]:
    """Register each device that is not registered yet, and return every device's MQTT secret (a device that was
    registered already gets a new one: its old secret is not kept anywhere to be read back).

    ``api_url`` is the platform's base URL, e.g. http://127.0.0.1:8000. With a customer's token the devices are
    that customer's; with an operator's, they go to a "Simulated devices" customer (created on first use).
    """
    secrets: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(
        base_url=f"{api_url.rstrip('/')}/api/v1", timeout=10, headers=headers, verify=client_tls()
    ) as api:
        me = api.get("/auth/me").raise_for_status().json()
        customer_id = me["customer_id"] or _simulators_customer(api, email)
        for model in models:
            request = device_request(model, customer_id=customer_id)
            response = api.post("/devices", json=request.model_dump(mode="json"))
            if response.status_code == httpx.codes.CONFLICT:
                log.info("%s is registered already: new MQTT credentials", model.device_id)
                rotated = api.post(f"/devices/{model.device_id}/credentials").raise_for_status().json()
                secrets[model.device_id] = rotated["mqtt_password"]
                continue
            response.raise_for_status()
            secrets[model.device_id] = response.json()["credentials"]["mqtt_password"]
            log.info("registered %s with %d slot(s)", model.device_id, len(request.slots))
    return secrets


def _simulators_customer(api: httpx.Client, email: str) -> str:
    created = api.post("/customers", json={"name": "Simulated devices", "email": email})
    if created.status_code != httpx.codes.CONFLICT:
        return str(created.raise_for_status().json()["id"])
    customers = api.get("/customers", params={"limit": 1000}).raise_for_status().json()
    return str(next(c["id"] for c in customers if c["email"] == email))
