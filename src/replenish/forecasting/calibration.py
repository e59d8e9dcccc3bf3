"""Learning from ended cycles: the service level each slot's forecast plans at, so that its slots run out before the
stated early date as often as the stated service level says, and no more. Pure, like the model.

The forecast's early date is the (1 - S) quantile of the empty time under the model's spread. The outcomes show
how often slots really ran out before it (forecasting.outcomes). A calibration moves the quantile the model is
asked for, in standard-normal units (a shift of its z), after every outcome, as adaptive conformal inference does
(Gibbs and Candès, 2021): up by STEP x (1 - a) after a miss, down by STEP x a after a hit, where a is the stated
1 - S. It settles where misses come at the stated rate, whatever the model's spread gets wrong, and follows a
fleet whose use changes.

Two shifts add up: the group's (device kind and slot name), learned from all its slots' outcomes, and the slot's
own deviation from it, learned from the slot's outcomes with a smaller step. A slot without outcomes plans at its
group's level, a group without outcomes at the stated one; both are bounded, so no streak can push a forecast to
absurdity. A steady slot whose forecasts were too cautious earns a lower level (a later order); a bursty one pays
for its bursts with a higher one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

GROUP_STEP = 0.2
SLOT_STEP = 0.1
GROUP_BOUNDS = (-1.0, 2.0)
SLOT_BOUNDS = (-0.5, 1.0)
# The level the model is asked for never leaves these: beyond them the normal tail says nothing useful.
LEVEL_BOUNDS = (0.5, 0.9999)

_NORMAL = statistics.NormalDist()


def lesson(*, missed: bool | None, stated: float, step: float, before: bool | None = None) -> float:
    """How far one outcome moves a shift: ``missed`` when the slot ran out before the early date stated at the
    decision (None: the outcome teaches nothing, forecasting.outcomes.teaching), ``stated`` the service level then.
    ``before``: what the same outcome taught earlier and no longer does (a cycle learned from when it ran empty, then
    read again at its refill), taken back."""

    def taught(was_missed: bool | None) -> float:
        return 0.0 if was_missed is None else step * ((1.0 if was_missed else 0.0) - (1.0 - stated))

    return taught(missed) - taught(before)


def learn(
    shift: float,
    *,
    missed: bool | None,
    stated: float,
    step: float,
    bounds: tuple[float, float],
    before: bool | None = None,
) -> float:
    """A shift after one outcome, within its bounds (the live service adds lesson() in SQL, within the same)."""
    moved = shift + lesson(missed=missed, stated=stated, step=step, before=before)
    return min(bounds[1], max(bounds[0], moved))


@dataclass(frozen=True)
class Calibration:
    """What a slot's forecasts have learned: the group's shift and the slot's own, in z units."""

    group_shift: float = 0.0
    slot_shift: float = 0.0
    group_cycles: int = 0
    slot_cycles: int = 0

    def service_level(self, stated: float) -> float:
        """The level the model plans at for a slot whose customer asked for ``stated``."""
        shift = self.group_shift + self.slot_shift
        if not shift:
            return stated
        level = _NORMAL.cdf(_NORMAL.inv_cdf(stated) + shift)
        return min(LEVEL_BOUNDS[1], max(LEVEL_BOUNDS[0], level))

    def describe(self, stated: float) -> str:
        """For a decision's reason: what the level planned at was learned from."""
        planned = self.service_level(stated)
        return (
            f"planned at {planned:.2%} to keep the stated {stated:.0%}, as {self.group_cycles} ended cycle(s) of "
            f"its kind and {self.slot_cycles} of this slot showed"
        )
