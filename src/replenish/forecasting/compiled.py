"""Compiled numerics: the forecast's loops over readings, compiled to machine code by numba.

The model walks every reading of a slot's history several times per evaluation (cycles, outliers, the fit, the
weekly rhythm, the spread of use). As numpy expressions each walk is a dozen short array operations whose call
overhead, not their arithmetic, is the cost; as compiled loops they are one pass each. This is how statsforecast
runs its models.

Numba is loaded when a kernel is first called, not on import: it adds about 0.5 s and 100 MB to a process, and only
the evaluator and the backtest forecast (the API and the ingestor import the model for its types). Compiled code is
cached on disk (``cache=True``), so only the first process on a machine pays the compilation (``compile_ahead``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

_kernels: list[Kernel] = []
_lock = threading.Lock()


class Kernel:
    """A function that numba compiles: a plain Python function until a kernel is first called."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.dispatcher: Callable[..., Any] | None = None
        functools.update_wrapper(self, function)
        _kernels.append(self)

    def __call__(self, *args: Any) -> Any:
        if self.dispatcher is None:
            _load_numba()
        assert self.dispatcher is not None
        return self.dispatcher(*args)


def compiled(function: Callable[..., Any]) -> Any:
    """Mark a function of numbers and arrays for numba (nopython mode: no Python objects inside)."""
    return Kernel(function)


def _load_numba() -> None:
    import numba

    with _lock:
        for kernel in _kernels:
            if kernel.dispatcher is None:
                kernel.dispatcher = numba.njit(cache=True, nogil=True)(kernel.function)
        # Compiled code calls a kernel by its global name, which must then be numba's dispatcher, not the Kernel
        # (and Python callers go straight to the dispatcher too).
        for namespace in {id(k.function.__globals__): k.function.__globals__ for k in _kernels}.values():
            for name, value in list(namespace.items()):
                if isinstance(value, Kernel) and value.dispatcher is not None:
                    namespace[name] = value.dispatcher


@compiled
def small_median(values: np.ndarray, count: int) -> float:
    """The median of values[:count] (count >= 1), for the handful of readings a neighbourhood holds. Sorts
    values[:count] in place: callers pass a scratch buffer."""
    for index in range(1, count):  # insertion sort: a few values
        value, other = values[index], index - 1
        while other >= 0 and values[other] > value:
            values[other + 1] = values[other]
            other -= 1
        values[other + 1] = value
    return (values[(count - 1) // 2] + values[count // 2]) / 2
