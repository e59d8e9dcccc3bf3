"""Time when nobody uses a slot (the customer's pause windows: "away 12 to 26 December").

A forecast runs on a clock that stops during absences: readings taken during one say nothing about use and are
left out, and the days of an absence are days of no use, so the slot empties that much later.
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

    def to_use_time(self, moments: np.ndarray) -> np.ndarray:
        """Epoch seconds less the absent time before each moment."""
        absent = np.clip(moments[..., None] - self.starts, 0.0, self.ends - self.starts).sum(axis=-1)
        return moments - absent

    def from_use_time(self, use_time: float) -> float:
        """The moment at which this much use time has passed: the inverse of to_use_time outside absences (a use
        time at which an absence begins maps to that absence's end, when use resumes)."""
        moment = use_time
        for start, end in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            if moment < start:
                break
            moment += end - start
        return moment
