"""Time when nobody uses a slot (the customer's pause windows: "away 12 to 26 December").

Readings taken during an absence say nothing about use and are left out; its days are days of no use (see
weekly.use_days), so the slot empties that much later. Time itself is not shifted: weekdays stay weekdays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class Absences:
    """Half-open intervals [start, end) in epoch seconds, sorted and not overlapping."""

    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, intervals: Iterable[tuple[datetime, datetime]]) -> Absences:
        merged: list[list[float]] = []
        for start, end in sorted((s.timestamp(), e.timestamp()) for s, e in intervals):
            if end <= start:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        bounds = np.array(merged, dtype=float).reshape(-1, 2)
        return cls(starts=bounds[:, 0], ends=bounds[:, 1])

    def __bool__(self) -> bool:
        return len(self.starts) > 0

    def inside(self, moments: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.starts, moments, side="right") - 1
        return (index >= 0) & (moments < self.ends[np.maximum(index, 0)])

    def before(self, moments: np.ndarray) -> np.ndarray:
        """How many absences have begun by each moment."""
        return np.searchsorted(self.starts, moments, side="right")
