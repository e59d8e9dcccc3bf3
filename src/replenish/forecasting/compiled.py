"""Compiled numerics: the forecast's loops over readings, compiled to machine code by numba.

The model walks every reading of a slot's history several times per evaluation (cycles, outliers, the fit, the
weekly rhythm, the spread of use). As numpy expressions each walk is a dozen short array operations whose call
overhead, not their arithmetic, is the cost; as compiled loops they are one pass each. This is how statsforecast
runs its models.

Numba is loaded when a kernel is first called, not on import: it adds about 0.5 s and 150 MB to a process, and only
the evaluator and the backtest forecast (the API and the ingestor import the model for its types). Then every kernel
is compiled at once (the functions registered with ``@warm_up`` call them all), under a lock that one process on the
machine holds at a time: compiled code is cached on disk (``cache=True``), so the first process compiles (about half
a minute) and the others, started with it, wait and load the cache (about a second).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

_kernels: list[Kernel] = []
_warm_ups: list[Callable[[], None]] = []
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


Function = TypeVar("Function", bound=Callable[..., Any])


def compiled(function: Function) -> Function:
    """Mark a function of numbers and arrays for numba (nopython mode: no Python objects inside). The kernel keeps
    the function's signature for the type checker; call it with positional arguments (Kernel.__call__ passes no
    keywords)."""
    return cast(Function, Kernel(function))


def warm_up(function: Callable[[], None]) -> Callable[[], None]:
    """Register a function that calls kernels with the argument types they get in use: run when numba is loaded,
    so that every kernel is compiled (or loaded from the cache) then, under the machine's lock."""
    _warm_ups.append(function)
    return function


def load() -> None:
    """Load numba and every kernel now (see the module doc)."""
    if any(kernel.dispatcher is None for kernel in _kernels):
        _load_numba()


def _load_numba() -> None:
    import numba

    with _lock:
        if all(kernel.dispatcher is not None for kernel in _kernels):
            return  # another thread did
        with _one_compiler_at_a_time():
            for kernel in _kernels:
                kernel.dispatcher = numba.njit(cache=True, nogil=True)(kernel.function)
            # Compiled code calls a kernel by its global name, which must then be numba's dispatcher, not the
            # Kernel (and Python callers go straight to the dispatcher too).
            for namespace in {id(k.function.__globals__): k.function.__globals__ for k in _kernels}.values():
                for name, value in list(namespace.items()):
                    if isinstance(value, Kernel) and value.dispatcher is not None:
                        namespace[name] = value.dispatcher
            for function in _warm_ups:
                function()


@contextmanager
def _one_compiler_at_a_time() -> Iterator[None]:
    """An exclusive lock on a file, per installed copy of this package, for as long as a process compiles."""
    package = str(Path(__file__).resolve().parent).encode()
    path = Path(tempfile.gettempdir()) / f"replenish-numba-{hashlib.sha256(package).hexdigest()[:16]}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    return float((values[(count - 1) // 2] + values[count // 2]) / 2)
