"""Leader leases in the `ENGINE_LEASE` bucket: one holder per key, renewed by compare-and-set.

A holder takes a key by *creating* it (refused while anyone else's entry
lives), then renews it every LEASE_RENEW_S with an update conditioned on the
revision it last wrote. The bucket's entries expire after LEASE_TTL_S of
silence, so a dead holder's key disappears and the first standby to poll
creates it anew. A renewal refused for a wrong revision means someone else
holds the key now: the lease is lost (`lost` is set) and the holder must stop
acting as leader. Every process that needs "one of us at a time" uses this
(engine workers: key `<SYMBOL>`; shard workers: `shard.<NAME>`; shard
feeders: `feeder.<NAME>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from exchange.stream.topology import LEASE_RENEW_S, lease_bucket

log = logging.getLogger("strongroom.lease")


class Lease:
    """One key of the lease bucket, as seen by one would-be holder."""

    def __init__(self, js: JetStreamContext, key: str, holder: str) -> None:
        self.js = js
        self.key = key
        self.holder = holder
        self.revision = 0
        self.lost = asyncio.Event()

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this holder owns the key (True) or `stop` is set (False)."""
        kv: KeyValue | None = None
        while not stop.is_set():
            try:
                kv = kv or await lease_bucket(self.js)
                self.revision = await kv.create(self.key, self.holder.encode())
                self.lost.clear()
                log.info("%s holds the lease %s", self.holder, self.key)
                return True
            except KeyWrongLastSequenceError:
                pass
            except NatsError as exc:
                log.warning("lease check for %s failed: %s", self.key, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LEASE_RENEW_S)
        return False

    async def keep(self) -> None:
        """Renew the lease every LEASE_RENEW_S until it is lost (then set `lost` and return).

        Run it as a task while leading; cancel it when the term ends.
        """
        kv = await lease_bucket(self.js)
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            try:
                self.revision = await kv.update(self.key, self.holder.encode(), last=self.revision)
            except KeyWrongLastSequenceError:
                log.error("%s lost the lease %s", self.holder, self.key)
                self.lost.set()
                return
            except NatsError as exc:
                # Keep trying: if the lease expires meanwhile, the update fails with a wrong
                # last sequence, and whatever the holder fences on refuses a late writer.
                log.warning("lease renewal for %s failed: %s", self.key, exc)

    async def release(self) -> None:
        """Give the lease up (clean shutdown), so a standby need not wait for it to expire."""
        with contextlib.suppress(NatsError, TimeoutError):
            kv = await lease_bucket(self.js)
            await kv.delete(self.key, last=self.revision)
