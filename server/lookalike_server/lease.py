"""A server instance's identity in the stores, and its heartbeat.

Each instance holds a lease: a Redis key ``lease:<owner>`` with a TTL, renewed
every third of it. Records an instance's insert attempts own carry its id; no
other instance takes them over or sweeps them while the lease lives (see
:mod:`lookalike_server.ingest`). Within the instance, each attempt has a token
that is registered as in flight *before* it is written anywhere, so this
instance's own sweep never removes work that is still running.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING

from lookalike_server.errors import ServiceError

if TYPE_CHECKING:
    from lookalike_server.store import Stores

log = logging.getLogger(__name__)

#: A server instance's lease on its in-flight inserts; renewed every third of it.
DEFAULT_LEASE_S = 30.0


class Lease:
    """This server instance's identity in the stores, and its heartbeat.

    Args:
        stores: The stores.
        ttl_s: Lease lifetime; renewed every ``ttl_s / 3``.
    """

    def __init__(self, stores: Stores, ttl_s: float = DEFAULT_LEASE_S) -> None:
        self.owner = uuid.uuid4().hex
        self.ttl_s = ttl_s
        self._stores = stores
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._stop = threading.Event()
        self._ok = True
        self.renew()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Renews the lease now; False (logged once per outage) when Redis does not answer."""
        try:
            self._stores.redis.renew_lease(self.owner, self.ttl_s)
        except ServiceError as exc:
            if self._ok:
                log.warning("lease renewal of server instance %s failed: %s", self.owner[:8], exc)
            self._ok = False
            return False
        if not self._ok:
            log.info("lease of server instance %s renewed again", self.owner[:8])
        self._ok = True
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()

    def begin(self) -> str:
        """A new attempt token, registered as in flight *before* it is written anywhere."""
        token = f"{self.owner}.{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._in_flight.add(token)
        return token

    def end(self, token: str) -> None:
        """The attempt is over (completed or cleaned up, or left for the sweep)."""
        with self._lock:
            self._in_flight.discard(token)

    def in_flight(self, token: str) -> bool:
        """Whether an attempt of this instance with that token is running."""
        with self._lock:
            return token in self._in_flight

    def close(self) -> None:
        """Stops the heartbeat and ends the lease (a clean stop: others may sweep at once)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._stores.redis.drop_lease(self.owner)
        except ServiceError as exc:
            log.warning("dropping the lease of server instance %s failed: %s", self.owner[:8], exc)
