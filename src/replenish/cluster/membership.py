"""Which member of an ingest share group this process is: the lowest member number whose MQTT sessions no live
process holds. The number names the sessions, so a process that replaces a dead member (restarted, recreated with
another hostname, or a new one) resumes that member's persistent sessions, and receives what the broker queued
for them meanwhile. Some brokers (Mosquitto among them) keep handing a disconnected member its share of the
messages until its session comes back."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from replenish.cluster.locks import AdvisoryLock, FileLock, HeldLock, is_postgres, lock_dir, session_lock_key
from replenish.constants import INGEST_SHARE_MAX_MEMBERS, LOCK_CHECK_SECONDS

log = logging.getLogger(__name__)


def session_lock(database_url: str, client_ids: tuple[str, ...]) -> HeldLock:
    name = f"MQTT sessions {', '.join(client_ids)}"
    if is_postgres(database_url):
        return AdvisoryLock(database_url, keys=tuple(session_lock_key(cid) for cid in client_ids), name=name)
    return FileLock(tuple(lock_dir(database_url) / f"{cid}.lock" for cid in client_ids), name=name)


@dataclass
class Membership:
    number: int
    client_id: str
    lock: HeldLock


def claim_member(
    database_url: str, *, client_id: str, session_ids: Callable[[str], tuple[str, ...]], wait_seconds: float = 30.0
) -> Membership:
    """Take the lowest free member number n: this process's client id is then ``{client_id}-{n}``, and
    ``session_ids`` of it (one per lane) are the MQTT sessions it holds. Waits up to ``wait_seconds`` for the
    database."""
    stop = threading.Event()
    waited = 0.0
    while True:
        unreachable = False
        for number in range(1, INGEST_SHARE_MAX_MEMBERS + 1):
            member_id = f"{client_id}-{number}"
            lock = session_lock(database_url, session_ids(member_id))
            if lock.acquire():
                log.info("ingest share group member %d: MQTT sessions %s", number, ", ".join(session_ids(member_id)))
                return Membership(number=number, client_id=member_id, lock=lock)
            lock.release()
            if not lock.refused:
                unreachable = True
                break
        if not unreachable:
            raise RuntimeError(f"all {INGEST_SHARE_MAX_MEMBERS} ingest share group members are taken")
        if waited >= wait_seconds:
            raise RuntimeError("cannot reach the database to claim an ingest share group member")
        stop.wait(1.0)
        waited += 1.0


class MembershipWatch:
    """Keeps checking that this process still holds its member's sessions. Lost with the database (a restart, a
    network failure), it takes them again once it can; taken meanwhile by another process, which then connects to
    the broker with the same client ids, this process must stop consuming at once, or the two would take the
    sessions from each other at the broker: ``on_lost`` is called (the process stops)."""

    def __init__(self, membership: Membership, *, on_lost: Callable[[], None]) -> None:
        self.membership = membership
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.membership.lock.release()

    def _run(self) -> None:
        lock = self.membership.lock
        while not self._stop.wait(LOCK_CHECK_SECONDS):
            if lock.check():
                continue
            if lock.acquire():
                log.info("ingest member %d: sessions held again", self.membership.number)
            elif lock.refused:
                log.critical(
                    "ingest member %d: another process took this member's MQTT sessions while the database was "
                    "unreachable; stopping",
                    self.membership.number,
                )
                self.on_lost()
                return
