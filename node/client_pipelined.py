"""A thread-safe blocking face of the pipelining client (node/client_async.py):
its event loop runs in a daemon thread, so calls from many threads at once
share one session and one connection per node, and are batched together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from node.api_range import TxnCompare, TxnItem
from node.client import RangeResult, TxnResult, WriteResult
from node.client_async import AsyncClient, PipelineStats
from node.client_lease import Lease, LeaseInfo
from node.transport.zmq import CurveKeys

T = TypeVar("T")


class PipelinedClient:
    """Blocking methods callable from any number of threads at once, and
    `submit_*` twins returning a concurrent.futures.Future. Errors are those
    of node/client.py (ClientError, OutcomeUnknown, Unavailable). Close it
    (or use `with`) to close the session and stop the thread."""

    def __init__(self, nodes: Mapping[str, str], keys: CurveKeys | None, *, timeout_s: float = 5.0,
                 attempt_timeout_s: float = 1.0, order: Sequence[str] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="pipelined-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            # Made inside the loop: its sockets belong to the loop's thread.
            return AsyncClient(nodes, keys, timeout_s=timeout_s,
                               attempt_timeout_s=attempt_timeout_s, order=order)

        try:
            self._client = self._run(make()).result()
        except BaseException:
            self._stop_loop()
            raise
        self._closed = False

    @property
    def stats(self) -> PipelineStats:
        return self._client.stats

    @property
    def session(self) -> int | None:
        return self._client.session

    def _run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # --- futures ------------------------------------------------------------

    def submit_put(self, key: str, value: bytes, *, prev: bool = False,
                   lease: int = 0) -> concurrent.futures.Future[WriteResult]:
        return self._run(self._client.put(key, value, prev=prev, lease=lease))

    def submit_delete(self, key: str, *,
                      prev: bool = False) -> concurrent.futures.Future[WriteResult]:
        return self._run(self._client.delete(key, prev=prev))

    def submit_cas(self, key: str, expected: bytes | None,
                   value: bytes) -> concurrent.futures.Future[WriteResult]:
        return self._run(self._client.cas(key, expected, value))

    def submit_append(self, key: str, value: bytes) -> concurrent.futures.Future[WriteResult]:
        return self._run(self._client.append(key, value))

    def submit_txn(self, compare: Sequence[TxnCompare], success: Sequence[TxnItem] = (),
                   failure: Sequence[TxnItem] = ()) -> concurrent.futures.Future[TxnResult]:
        return self._run(self._client.txn(compare, success, failure))

    def submit_get(self, key: str, *, stale: bool = False,
                   node: str | None = None) -> concurrent.futures.Future[bytes | None]:
        return self._run(self._client.get(key, stale=stale, node=node))

    def submit_range(self, key: str, range_end: str | None = None, *, prefix: bool = False,
                     revision: int = 0, limit: int = 0, stale: bool = False,
                     node: str | None = None) -> concurrent.futures.Future[RangeResult]:
        return self._run(self._client.range(key, range_end, prefix=prefix, revision=revision,
                                            limit=limit, stale=stale, node=node))

    # --- blocking -------------------------------------------------------------

    def put(self, key: str, value: bytes, *, prev: bool = False, lease: int = 0) -> WriteResult:
        return self.submit_put(key, value, prev=prev, lease=lease).result()

    def delete(self, key: str, *, prev: bool = False) -> WriteResult:
        return self.submit_delete(key, prev=prev).result()

    def cas(self, key: str, expected: bytes | None, value: bytes) -> WriteResult:
        return self.submit_cas(key, expected, value).result()

    def append(self, key: str, value: bytes) -> WriteResult:
        return self.submit_append(key, value).result()

    def txn(self, compare: Sequence[TxnCompare], success: Sequence[TxnItem] = (),
            failure: Sequence[TxnItem] = ()) -> TxnResult:
        return self.submit_txn(compare, success, failure).result()

    def get(self, key: str, *, stale: bool = False, node: str | None = None) -> bytes | None:
        return self.submit_get(key, stale=stale, node=node).result()

    def range(self, key: str, range_end: str | None = None, *, prefix: bool = False,
              revision: int = 0, limit: int = 0, stale: bool = False,
              node: str | None = None) -> RangeResult:
        return self.submit_range(key, range_end, prefix=prefix, revision=revision, limit=limit,
                                 stale=stale, node=node).result()

    def delete_range(self, key: str, range_end: str | None = None, *,
                     prefix: bool = False) -> tuple[int, int]:
        return self._run(self._client.delete_range(key, range_end, prefix=prefix)).result()

    def compact(self, revision: int) -> int:
        return self._run(self._client.compact(revision)).result()

    def lease_grant(self, ttl_s: float) -> Lease:
        return self._run(self._client.lease_grant(ttl_s)).result()

    def lease_keepalive(self, lease_id: int) -> int:
        return self._run(self._client.lease_keepalive(lease_id)).result()

    def lease_revoke(self, lease_id: int) -> None:
        self._run(self._client.lease_revoke(lease_id)).result()

    def lease_ttl(self, lease_id: int, *, keys: bool = False) -> LeaseInfo:
        return self._run(self._client.lease_ttl(lease_id, keys=keys)).result()

    def lease_list(self) -> list[int]:
        return self._run(self._client.lease_list()).result()

    def close(self) -> None:
        """Close the session and the sockets, then stop the loop's thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close()).result()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> PipelinedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
