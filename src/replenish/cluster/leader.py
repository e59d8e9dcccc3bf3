"""Single-leader roles: the process holding a lock leads, the others stand by and poll for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from replenish.cluster.locks import HeldLock

log = logging.getLogger(__name__)


class LeaderElection:
    """Leads while it holds ``lock``: checks it every ``interval`` seconds and, when its database session is gone,
    stops leading at once (before anything else runs) and tries to take it again like any standby.

    Between two checks a leader may not know yet that it lost the lock, so a job may still start on a process that
    stopped leading up to ``interval`` seconds earlier: the jobs keep their own uniqueness (one decision per depletion
    cycle, one escalation step per incident and level) rather than rely on the lock alone."""

    def __init__(
        self,
        lock: HeldLock,
        *,
        name: str,
        interval: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.lock = lock
        self.name = name
        self.interval = interval
        self.on_change = on_change
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-election", daemon=True)

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        self._step()  # a process that can lead does so from its first job on
        if not self.is_leader:
            if self.lock.refused:
                log.info("%s: standing by; another process leads", self.name)
            else:
                log.warning("%s: not leading: the lock could not be asked for (see above); retrying", self.name)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self.is_leader:
            log.info("%s: stepping down", self.name)
            self._leading.clear()
            if self.on_change is not None:
                self.on_change(False)
        self.lock.release()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._step()
            except Exception:
                log.exception("%s: leader election step failed", self.name)
                self._set(False)

    def _step(self) -> None:
        if self.is_leader:
            if not self.lock.check():
                self._set(False)
        elif self.lock.acquire():
            self._set(True)

    def _set(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        if leading:
            self._leading.set()
            log.info("%s: this process is the leader now", self.name)
        else:
            self._leading.clear()
            log.warning("%s: this process is no longer the leader", self.name)
        if self.on_change is not None:
            self.on_change(leading)
