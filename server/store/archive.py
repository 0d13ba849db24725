"""The response store as the event loop uses it: every call on the store's own thread.

One thread per store: a backend connection is used by one thread only, and a slow disk or
database makes stored requests wait there, never the event loop (streams, health checks and
stateless requests go on). Failures come back as `StoreUnavailable` (the routes' 503); the
metrics (stored responses, bytes, evictions, call latency) are updated here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from server.metrics import Metrics
from server.store.base import Chain, PutResult, ResponseStore, StoredResponse, StoreTotals

T = TypeVar("T")

# A chain longer than this is refused rather than walked (each turn is one read).
MAX_CHAIN_LENGTH = 1000


class StoreArchive:
    def __init__(self, store: ResponseStore, metrics: Metrics, description: str) -> None:
        self.store = store
        self.metrics = metrics
        self.description = description  # where it lives, for logs and errors (no secrets)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="responses-store")

    async def _call(self, operation: str, function: Callable[..., T], *args: Any) -> T:
        started = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
        finally:
            self.metrics.store_seconds.labels(operation).observe(time.monotonic() - started)

    def _count(self, totals: StoreTotals) -> None:
        self.metrics.stored_responses.set(totals.responses)
        self.metrics.stored_bytes.set(totals.bytes)

    async def open(self) -> None:
        self._count(await self._call("open", self.store.open))

    async def save(
        self, record: StoredResponse, *, owner: str | None = None, only_if_status: tuple[str, ...] | None = None
    ) -> bool:
        """Write it; False when `only_if_status` did not hold (nothing written)."""
        result: PutResult = await self._call(
            "put", functools.partial(self.store.put, owner=owner, only_if_status=only_if_status), record, time.time()
        )
        self._count(result.totals)
        if result.evicted:
            self.metrics.store_evictions.labels("size").inc(result.evicted)
        if result.expired:
            self.metrics.store_evictions.labels("expired").inc(result.expired)
        return result.written

    async def cancel(self, response_id: str) -> StoredResponse | None:
        return await self._call("cancel", self.store.cancel, response_id, time.time())

    async def heartbeat(self, response_id: str) -> str | None:
        return await self._call("heartbeat", self.store.heartbeat, response_id, time.time())

    async def mark_stale(self, owner: str, stale_before: float) -> int:
        return await self._call("mark_stale", self.store.mark_stale, owner, stale_before)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._call("get", self.store.get, response_id, time.time())

    async def delete(self, response_id: str) -> bool:
        existed, totals = await self._call("delete", self.store.delete, response_id, time.time())
        self._count(totals)
        return existed

    async def append_events(self, response_id: str, events: list[tuple[int, str]]) -> bool:
        return await self._call("append_events", self.store.append_events, response_id, events, time.time())

    async def events_after(self, response_id: str, after: int) -> tuple[str | None, list[tuple[int, str]]]:
        return await self._call("events_after", self.store.events_after, response_id, after, time.time())

    def _walk(self, response_id: str, now: float) -> Chain:
        chain = Chain()
        next_id: str | None = response_id
        while next_id is not None and len(chain.responses) < MAX_CHAIN_LENGTH:
            record = self.store.get(next_id, now)
            if record is None:
                chain.missing = next_id
                break
            chain.responses.append(record)
            next_id = record.previous_id
        chain.responses.reverse()
        return chain

    async def chain(self, response_id: str) -> Chain:
        """The responses that `response_id` continues, oldest first, in one trip to the thread."""
        return await self._call("chain", self._walk, response_id, time.time())

    async def close(self) -> None:
        await self._call("close", self.store.close)
        self._thread.shutdown(wait=False)
