"""What the tests share, by concern: the brokers and database they start (`brokers`), the platform and its settings
(`platform`), the API as customers and operators see it (`api`), devices on MQTT (`mqtt`), and the servers that
stand in for the outside world: a webhook receiver and a mailbox (`servers`). Fixtures stay in conftest.py."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition, for waits the ingestor's handled count cannot express."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())
