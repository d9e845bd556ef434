"""Faust's consumer drain loop without four asyncio tasks per message.

Faust hands every fetched message to its topic conductor with::

    await self.wait_first(callback(message), self.suspend_flow.wait())

(``faust.transport.consumer.Consumer._drain_messages``). ``mode``'s ``wait_first`` wraps the callback, the
flow-suspension event, and the service's stopped and crashed events in four tasks, waits for the first
with ``asyncio.wait`` and cancels the other three: a dozen event-loop callbacks per message, whatever
the callback does. The conductor's callback almost never waits: it checks flow control (an event that is
set), the producer's buffer, and puts the event into the agent's queue (``put_nowait`` when the queue is
not full). Profiled on the decode-only agent, this wrapping was the largest single cost per message.

:class:`FastDrainConsumer` runs the callback's first step synchronously. When it finishes there (the
common case) the message was delivered and nothing was scheduled. When it has to wait (the agent's
buffer is full, flow is suspended for a rebalance, the producer buffer is high), the half-run coroutine is
resumed under the very same ``wait_first(..., suspend_flow.wait())`` as Faust's, so rebalances, stops and
back-pressure behave exactly as before. Everything else in the loop is Faust's (0.15.3) unchanged: the
read-offset bookkeeping, gap tracking and commit-every. Faust yields to the loop with a ``sleep(0)`` every 100
messages (and in every ``wait_first``); this loop yields every :data:`YIELD_EVERY` messages, so an HTTP
request never waits behind a long burst of hand-offs.

Three differences from Faust's loop make it safe where Faust's is not (found as lost events when a worker left
the group while events flowed; ``tests/faults/test_worker_faults.py::test_scale_1_2_1``):

* :meth:`SeekSafeConsumer.perform_seek` stops the flow before seeking (this one applies to Faust's own loop
  too: every worker's consumer is a :class:`SeekSafeConsumer`). Faust's recovery resumes the input
  partitions and awaits this seek with the flow running; records handed over meanwhile left a false "gap"
  (counted as acknowledged) once the seek moved the read offset back, and the ``flow_control.resume()``
  after it cleared the agents' queues, so events still queued were committed without being applied.
* a batch stops as soon as the flow is stopped (checked before every hand-off, not only by ``getmany``),
  and a hand-off cancelled by the stop leaves the read offset alone instead of marking the message read.
* the same seek sends an input partition that has no committed offset back to its beginning: aiokafka's
  ``seek_to_committed`` leaves such a partition at its fetch position, past records that the stop had just
  cleared from the agents' queues, and Faust then committed over them (found as 1,828-3,053 lost events of
  one partition in ~1 of 6 ``test_kill9_mid_stream[kill9-dir-deleted]`` runs).

The fetch wait (:meth:`FastDrainConsumer._wait_next_records`): while the agent's buffer holds a partition back
for back-pressure, Faust's ``getmany`` still waits up to a second for records of the quiet partitions left
active, so the agent drained its buffer and sat idle until that second ended (~9% of the time on one worker);
here that wait is 50 ms (one worker: 5,100-5,800 vs 4,700-5,700 events/s, now at ~1 core; two: 9,800-10,900
vs 7,300-9,700).

The broker-side fetch wait (:class:`WorkerConsumerThread`, every worker): aiokafka keeps one fetch request in
flight per broker, and a partition whose records are still buffered in the client is left out of the next
request. So while the input partitions still had records, the request held only the quiet partitions (the
reroute and daily topics), and the broker parked it for ``fetch_max_wait_ms``, which Faust hard-codes to
1500 ms. An input partition that ran out of buffered records meanwhile could not be fetched before that
request came back: single ``getmany`` waits of 0.3-1.4 s with the agent's buffer empty, two workers idle
~25% of the time (1.4-1.5 cores of 2 used), and a last worker draining its partitions alone for 0.6-2 s at the
end of a run. ``ACTIONSTREAM_FETCH_MAX_WAIT_MS`` (default :data:`FETCH_MAX_WAIT_MS` = 50 ms) bounds that wait; an
idle worker then sends ~20 empty fetches a second. AMD EPYC, ``bench.run --only platform``, two alternating
series of 3 rounds of 200k events: two workers 21.7-29.4k -> 24.2-31.3k events/s, 2 / 1 worker median
1.54-1.61x -> 1.77-1.79x, the tail alone 0.6-2.0 -> 0.1-0.7 s; one worker unchanged (13.5-16.1k).

``ACTIONSTREAM_FAST_DRAIN=false`` gives Faust's own loop back (the benchmark compares both). With another Faust
release, whose drain loop differs from the copied one (checked by a hash of its source at start-up), the
worker logs a warning and keeps Faust's own loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import types
from collections.abc import AsyncIterator, Coroutine, Generator, Iterable
from typing import Any, cast

import aiokafka
import faust
from faust.transport.consumer import CONSUMER_FETCHING, RecordMap, ensure_TP
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from mode import Service, ServiceT

__all__ = ["FETCH_MAX_WAIT_MS", "YIELD_EVERY", "FastDrainConsumer", "SeekSafeConsumer", "WorkerConsumerThread",
           "faust_loop_matches", "finish", "install", "resume"]

log = logging.getLogger(__name__)

# sha256 of the source of faust.transport.consumer.Consumer._drain_messages that the loop below copies
FAUST_DRAIN_VERSION = "0.15.3"
FAUST_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"

# Messages handed over between two ``sleep(0)``s (Faust: 100, but Faust also yields in every wait_first).
# A burst of hand-offs delays whatever else waits on the loop (an HTTP request): 10 hand-offs take ~0.2 ms.
# Measured on one worker, 10 vs 100: the same throughput within noise (5,108 / 4,784 vs 4,382 / 4,483
# events/s) and a lower features p99 under stream load (10.6 / 13.9 vs 15.6 / 19.6 ms client-side).
YIELD_EVERY = 10

# How long a fetch waits for records while a partition is held back for back-pressure (see
# FastDrainConsumer._wait_next_records): the agent's buffer still holds 40% (~0.3 s of work) when the
# partition is given back, so 50 ms never lets it run dry; ~20 extra fetch calls per second while held back.
HELD_BACK_FETCH_WAIT_S = 0.05

# The longest the broker parks a fetch with no new records (aiokafka's fetch_max_wait_ms; Faust: 1500 ms):
# the default of WorkerSettings.fetch_max_wait_ms. See the module docstring.
FETCH_MAX_WAIT_MS = 50


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], blocked_on: Any) -> Generator[Any, Any, Any]:
    """Continue a coroutine whose first ``send(None)`` yielded ``blocked_on`` (what a Task would do).

    The yielded object goes to the driving task unchanged (a future with ``_asyncio_future_blocking``,
    or None for a bare yield); once it resolves, the coroutine is driven to the end with ``yield from``.
    An exception thrown in while it waits (a cancellation) is thrown into the coroutine, as a Task would.
    """
    try:
        yield blocked_on
    except BaseException as exc:  # noqa: BLE001 - forwarded, not swallowed
        try:
            blocked_on = coro.throw(exc)
        except StopIteration as stop:
            return stop.value
        return (yield from resume(coro, blocked_on))
    return (yield from coro)


async def finish(coro: Coroutine[Any, Any, Any], blocked_on: Any) -> Any:
    """:func:`resume` as a native coroutine (``wait_first`` accepts awaitables, not generators)."""
    return await resume(coro, blocked_on)


class WorkerConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer parks a fetch at the broker for at most
    ``transport.fetch_max_wait_ms`` (set by :func:`install`; Faust hard-codes 1500 ms). See the module docstring."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(transport, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            if not hasattr(consumer, "_fetch_max_wait_ms"):  # aiokafka passes it to its Fetcher at start()
                log.warning("aiokafka %s has no _fetch_max_wait_ms: the fetch wait stays at Faust's 1500 ms",
                            getattr(aiokafka, "__version__", "?"))
            else:
                consumer._fetch_max_wait_ms = wait_ms
        return consumer


class SeekSafeConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer whose :meth:`perform_seek` stops the flow first (every worker uses it), on a
    :class:`WorkerConsumerThread`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return WorkerConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        """Stop the flow, then seek every partition to its committed offset, and a partition without one to
        its beginning (Faust's seek, plus that second part).

        Faust's recovery resumes the input partitions and then awaits this seek with the flow already
        running (``Recovery.on_recovery_completed``). Without the stop, the drain hands records over
        while the seek is in flight; when it lands, the read offset drops back to the committed offset,
        the rest of the stale batch looks like a gap (which Faust counts as acknowledged), and the
        ``flow_control.resume()`` that follows clears the agents' queues: the events still queued were
        never applied, yet their offsets were committed through the gap (lost, found by
        ``tests/faults/test_worker_faults.py::test_scale_1_2_1``). Every caller resumes the flow after
        the seek (recovery) or runs it with the flow already stopped (``getmany``).

        A partition with no committed offset (or 0): aiokafka's ``seek_to_committed`` leaves its fetch
        position where it is (it seeks only to offsets > 0). If the flow ran before the seek, the fetcher is
        already past the records it handed over, and the stop just cleared them from the agents' queues;
        the read offset becomes None, so no gap is seen, and the next records' acks let Faust commit past
        the cleared ones: they were never applied (1,828 and 3,053 events of one partition lost in 2 of
        ~12 ``kill9-dir-deleted`` runs: a partition that no earlier worker had committed). Such a partition
        is now sent back to its beginning (the worker's ``auto_offset_reset`` is ``earliest``), where an
        uncommitted partition starts anyway, by a seek to its earliest offset: the position is set at once.
        """
        self.stop_flow()
        committed = await self.seek_to_committed()
        # None or 0: left where they were. Only the topics whose offsets Faust commits (the agents' input;
        # changelog partitions are positioned by the recovery's own seeks)
        acks_enabled_for = self.app.topics.acks_enabled_for
        unset = [tp for tp, offset in committed.items() if not offset and acks_enabled_for(tp.topic)]
        if unset and self.app.conf.consumer_auto_offset_reset == "earliest":
            # to explicit offsets, not aiokafka's seek_to_beginning: that one leaves the position unset until
            # the fetcher resolves it, and Faust's periodic verify_event_path asserts on an unset position
            # (a worker crashed at start-up that way in CI)
            earliest = await self._thread.earliest_offsets(*unset)  # aiokafka on the consumer thread
            await self._thread.seek_wait({tp: earliest[tp] for tp in unset})
        self._read_offset.update({tp: offset if offset is not None and offset >= 0 else None
                                  for tp, offset in committed.items()})
        self._committed_offset.update({ensure_TP(tp): offset if offset else None
                                       for tp, offset in committed.items() if offset is not None})
        known = {f"{tp.topic}[{tp.partition}]": off for tp, off in sorted(self._read_offset.items())
                 if off is not None and acks_enabled_for(tp.topic)}
        self.log.info("seeked to committed offsets %s; %d partitions without one to their beginning", known,
                      len(unset))

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's periodic slow-processing check, which must never crash the worker.

        It reads aiokafka's fetch position, which asserts while the position awaits a reset (a partition
        just assigned without a committed offset, or after an out-of-range fetch, until the fetcher looks up
        the offset). There is nothing to check then: skip it until the next round.
        """
        try:
            super().verify_event_path(now, tp)
        except AssertionError:
            self.log.debug("event path of %s not checked: its fetch position awaits a reset", tp)


class FastDrainConsumer(SeekSafeConsumer):
    """Faust's aiokafka consumer with the drain loop described in the module docstring.

    ``handoff_waits`` counts the messages whose hand-off had to wait (exported as
    ``actionstream_consumer_handoff_waits_total``).
    """

    handoff_waits = 0
    handoffs_abandoned = 0
    _reactivated: asyncio.Event | None = None

    def _wake_fetch(self) -> None:
        if self._reactivated is not None:
            self._reactivated.set()

    def on_buffer_drop(self, tp: TP) -> None:
        """A full agent buffer drained (Faust re-activates its partition): wake a fetch that waits for one."""
        super().on_buffer_drop(tp)
        self._wake_fetch()

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        super().resume_partitions(tps)
        self._wake_fetch()

    async def _wait_next_records(self, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:
        """Faust's, with a short fetch wait while a partition is out of the fetch for back-pressure.

        When the agent's buffer is 80% full, Faust takes the partition of each further message out of the
        fetch (``Consumer.on_buffer_full``) and gives it back once the buffer is down to 40%
        (``on_buffer_drop``). Meanwhile ``getmany`` keeps waiting up to ``timeout`` (1 s) for records of the
        partitions still active (here: the reroute and daily topics, which are quiet). A partition given
        back waits for that wait to end: the agent drained its buffer and sat idle (measured on one worker:
        the fetch came back 0.7 s after the 8 input partitions were given back, the agent's buffer was empty
        for ~0.4 s of every ~4.5 s cycle). So while any partition is held back, the wait is at most
        :data:`HELD_BACK_FETCH_WAIT_S`; and when no partition at all is active (Faust would sleep a whole
        second), the fetch waits for the first one to come back (:meth:`on_buffer_drop`)."""
        if self.flow_active and self._buffered_partitions and not self.app.client_only:
            if not self._get_active_partitions():
                if self._reactivated is None:
                    self._reactivated = asyncio.Event()
                self._reactivated.clear()
                try:
                    await asyncio.wait_for(self._reactivated.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                return {}, self._get_active_partitions()
            timeout = min(timeout, HELD_BACK_FETCH_WAIT_S)
        return await super()._wait_next_records(timeout)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        wait_first = self.wait_first
        suspend_flow = self.suspend_flow

        yield_every = YIELD_EVERY
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator[Any], getmany(timeout=1.0))
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        if not self.flow_active:
                            break  # stopped (rebalance or seek) while this batch ran: the seek re-reads it
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                # Faust counts a gap as acknowledged, so a commit can pass over it: on the
                                # input topic (not compacted, no transactions) a gap means records were skipped
                                self.log.warning("offsets %d-%d of %s were never handed over (a gap, which "
                                                 "Faust counts as acknowledged)", r_offset + 1, offset - 1, tp)
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            coro = cast(Coroutine[Any, Any, Any], callback(message))
                            try:
                                blocked_on = coro.send(None)
                            except StopIteration:
                                pass  # delivered without waiting: no tasks needed
                            else:
                                self.handoff_waits += 1
                                handoff = finish(coro, blocked_on)
                                waited = await wait_first(handoff, suspend_flow.wait())
                                if handoff not in waited.done:
                                    # flow stopped first: not delivered, so the read offset stays where it
                                    # was and the rest of the batch is dropped (a seek re-reads it)
                                    self.handoffs_abandoned += 1
                                    break
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


def faust_loop_matches() -> bool:
    """True when the installed Faust's ``_drain_messages`` is the one this loop was copied from."""
    try:
        src = inspect.getsource(FaustConsumer._drain_messages)
    except (OSError, TypeError):  # no source shipped: cannot tell
        return False
    return hashlib.sha256(src.encode()).hexdigest() == FAUST_DRAIN_SHA256


def install(app: Any, *, fast_drain: bool = True, fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> bool:
    """Make ``app`` build a :class:`FastDrainConsumer`, or a :class:`SeekSafeConsumer` with Faust's own loop;
    both fetch with ``fetch_max_wait_ms`` (:class:`WorkerConsumerThread`).

    Call before the app creates its consumer. Returns True when the fast drain is in place: False with
    ``fast_drain=False``, or (logging a warning, keeping Faust's own loop) when the installed Faust's drain
    loop differs from the one this copy was made from (another Faust release): the copy could then miss a
    fix or use attributes that no longer exist. The seek fix applies in every case.
    """
    transport = app.transport
    if not isinstance(transport, Transport):
        raise TypeError(f"the worker needs Faust's aiokafka transport, got {type(transport).__name__}")
    if app._consumer is not None:  # noqa: SLF001
        raise RuntimeError("the app's consumer already exists; install the drain before starting it")
    transport.Consumer = SeekSafeConsumer  # type: ignore[misc]  # per app, not for every Transport
    transport.fetch_max_wait_ms = fetch_max_wait_ms  # type: ignore[attr-defined]  # read by WorkerConsumerThread
    if not fast_drain:
        return False
    if not faust_loop_matches():
        log.warning("faust %s: its Consumer._drain_messages differs from the faust-streaming %s loop that "
                    "streams/drain.py was copied from; using Faust's own loop (slower). Compare the two and "
                    "update FAUST_DRAIN_SHA256 to re-enable it.", faust.__version__, FAUST_DRAIN_VERSION)
        return False
    transport.Consumer = FastDrainConsumer  # type: ignore[misc]
    return True
