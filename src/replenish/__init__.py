"""Replenish: IoT auto-replenishment and device monitoring."""

__version__ = "0.1.0"
