"""Resident memory of a benchmark's own process over a run, and whether it stays flat (bench/ingest.py's and
bench/evaluate.py's soaks)."""

from __future__ import annotations

from pathlib import Path


def resident_mb() -> float:
    """VmRSS of this process, MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_summary(samples: list[tuple[float, float]], *, process: str) -> str:
    """RSS over the phase, from (seconds into it, MB) samples: after a warm-up (the first 10%), a flat line has a
    slope near zero."""
    warm = [sample for sample in samples if sample[0] >= samples[-1][0] * 0.1]
    times = [t for t, _ in warm]
    values = [v for _, v in warm]
    mean_t, mean_v = sum(times) / len(times), sum(values) / len(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in warm) / spread * 60 if spread else 0.0
    at = {q: values[min(len(values) - 1, int(q * (len(values) - 1)))] for q in (0.0, 0.5, 1.0)}
    return (
        f"RSS of {process} after warm-up: {at[0.0]:.1f} MB -> {at[0.5]:.1f} MB (middle) -> {at[1.0]:.1f} MB "
        f"(end), peak {max(v for _, v in samples):.1f} MB; least-squares slope {slope:+.2f} MB/min over "
        f"{(times[-1] - times[0]) / 60:.1f} min ({len(samples)} samples)"
    )
