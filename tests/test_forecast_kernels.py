"""The model's compiled loops (forecasting/compiled.py) against direct transcriptions of what they compute.

Each kernel is one pass over the readings written for numba; the references here are the plain numpy or Python
statements of the same rule, slow and obvious. Random traces (hypothesis) with refills, plateaus, quantized and
noisy levels and irregular gaps."""

from __future__ import annotations

import statistics
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replenish.forecasting import model, weekly
from replenish.forecasting.model import (
    REFILL_BASELINE_DAYS,
    REFILL_BASELINE_READINGS,
    REFILL_CONFIRMATIONS,
    REFILL_MIN_RISE,
    RatePrior,
)
from replenish.forecasting.weekly import EPOCH_WEEKDAY, SECONDS_PER_DAY

CHECKS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def traces(draw: st.DrawFn, min_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (ascending, some equal) and levels in [0, 1]: use, refills, noise, quantization."""
    count = draw(st.integers(min_size, 160))
    gaps = draw(
        st.lists(
            st.sampled_from([0.0, 600.0, 3600.0, 4 * 3600.0, 86_400.0, 3.5 * 86_400.0]), min_size=count, max_size=count
        )
    )
    times = 1_767_225_600.0 + np.cumsum(gaps)
    level, levels = 1.0, []
    for _ in range(count):
        event = draw(st.sampled_from(["use", "use", "use", "refill", "hold", "spike"]))
        if event == "use":
            level = max(level - draw(st.floats(0.0, 0.08)), 0.0)
        elif event == "refill":
            level = draw(st.floats(0.3, 1.0))
        levels.append(min(level + (0.3 if event == "spike" else 0.0), 1.0))
    values = np.array(levels)
    if draw(st.booleans()):
        values = np.round(values / 0.05) * 0.05
    return times, values


def reference_cycle_starts(times: np.ndarray, levels: np.ndarray) -> list[int]:
    """split_cycles' rule, reading by reading: a rise over the median of the cycle's last readings, held."""
    starts = [0] if len(levels) else []
    for index in range(1, len(levels) - REFILL_CONFIRMATIONS):
        first = max(starts[-1], index - REFILL_BASELINE_READINGS)
        since = times[index - 1] - REFILL_BASELINE_DAYS * SECONDS_PER_DAY
        old = statistics.median(
            level for moment, level in zip(times[first:index], levels[first:index], strict=True) if moment >= since
        )
        if all(level >= old + REFILL_MIN_RISE for level in levels[index : index + 1 + REFILL_CONFIRMATIONS]):
            starts.append(index)
    return starts


@CHECKS
@given(traces(min_size=0))
def test_cycle_starts_follow_the_refill_rule(trace: tuple[np.ndarray, np.ndarray]) -> None:
    times, levels = trace
    assert model._cycle_starts(times, levels) == reference_cycle_starts(times, levels)


@CHECKS
@given(traces(min_size=3), st.booleans())
def test_the_fit_is_weighted_least_squares_with_a_level_per_cycle(
    trace: tuple[np.ndarray, np.ndarray], with_prior: bool
) -> None:
    times, levels = trace
    days = (times - times[-1]) / SECONDS_PER_DAY
    starts = model._cycle_starts(times, levels)
    cycle_of = model._cycle_numbers(len(levels), np.array(starts, dtype=np.int64))
    weights = 0.5 ** (-days / model.WEIGHT_HALF_LIFE_DAYS)
    prior = RatePrior(rate_per_day=0.04, rate_sd=0.01) if with_prior else None
    fitted, slope, slope_se, intercepts, level_variance, _ = model._fit_arrays(
        days,
        levels,
        weights,
        cycle_of,
        len(starts),
        np.nan if prior is None else prior.rate_per_day,
        0.0 if prior is None else prior.weight_days,
        0.0 if prior is None else prior.rate_variance,
    )
    spread = float(np.ptp(days))
    # The same line from the normal equations: one dummy per cycle and a common slope, the prior as an extra
    # observation of the slope with weight prior_sxx.
    design = np.column_stack([cycle_of == cycle for cycle in range(len(starts))] + [days]).astype(float)
    root = np.sqrt(weights)
    rows, targets = design * root[:, None], levels * root
    if prior is not None:
        prior_sxx = weights.sum() / max(spread, 1.0) * prior.weight_days**3 / 12.0
        extra = np.zeros(design.shape[1])
        extra[-1] = np.sqrt(prior_sxx)
        rows, targets = np.vstack([rows, extra]), np.append(targets, -prior.rate_per_day * np.sqrt(prior_sxx))
    if spread == 0 and prior is None:
        assert not fitted
        return
    solution, *_ = np.linalg.lstsq(rows, targets, rcond=None)
    assert fitted
    assert slope == pytest.approx(solution[-1], rel=1e-6, abs=1e-9)
    assert intercepts == pytest.approx(solution[:-1], rel=1e-6, abs=1e-9)
    assert slope_se > 0 and level_variance > 0


@CHECKS
@given(traces(min_size=0))
def test_outliers_stand_alone_against_their_neighbours(trace: tuple[np.ndarray, np.ndarray]) -> None:
    _, residuals = trace
    cycle_of = model._cycle_numbers(len(residuals), np.array([0, len(residuals) // 2], dtype=np.int64))
    kept = model._not_outliers(residuals, cycle_of)
    if len(residuals) < 3:
        assert kept.all()
        return
    neighbourhoods = [
        [
            residuals[other]
            for other in range(max(i - 2, 0), min(i + 3, len(residuals)))
            if cycle_of[other] == cycle_of[i]
        ]
        for i in range(len(residuals))
    ]
    deviation = np.array([residuals[i] - statistics.median(around) for i, around in enumerate(neighbourhoods)])
    bound = max(model.OUTLIER_SDS * 1.4826 * float(np.median(np.abs(deviation))), model.OUTLIER_MIN_DEVIATION)
    expected = [abs(deviation[i]) <= bound or len(around) < 3 for i, around in enumerate(neighbourhoods)]
    assert kept.tolist() == expected


@CHECKS
@given(traces(min_size=1), st.lists(st.floats(0.05, 3.0), min_size=7, max_size=7))
def test_effective_days_count_each_weekday_as_the_profile_says(
    trace: tuple[np.ndarray, np.ndarray], shares: list[float]
) -> None:
    times, _ = trace
    profile = np.array(shares)
    days = times / SECONDS_PER_DAY + EPOCH_WEEKDAY
    weeks = np.floor(days / 7)
    per_weekday = weeks[:, None] + np.clip((days - weeks * 7)[:, None] - np.arange(7), 0.0, 1.0)
    assert weekly.effective_days(times, profile) == pytest.approx(per_weekday @ profile, rel=1e-12)


def test_numba_is_loaded_only_by_a_process_that_forecasts() -> None:
    """The API and the ingestor import the model for its types: numba (0.5 s, 100 MB) stays out of them."""
    import subprocess

    script = (
        "import sys; import replenish.forecasting.model, replenish.automation.service, replenish.api.app;"
        "assert 'numba' not in sys.modules, 'numba loaded on import';"
        "from replenish.forecasting.model import compile_ahead; compile_ahead();"
        "assert 'numba' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
