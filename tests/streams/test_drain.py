"""streams.drain: the half-run callback is resumed exactly as an asyncio Task would run it.

The drain loop itself runs in every worker test (it is the default consumer); the worker-stream tests run
their worker with a 32-event agent buffer so the waiting path is taken there too
(``actionstream_consumer_handoff_waits_total > 0``). The last tests pin the loop's rules when the flow stops
mid-batch and the seek fix (the cause of events lost when a worker left the group, see streams/drain.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP

from streams.app import create_app
from streams.drain import (
    FETCH_MAX_WAIT_MS,
    HELD_BACK_FETCH_WAIT_S,
    FastDrainConsumer,
    SeekSafeConsumer,
    WorkerConsumerThread,
    finish,
)
from streams.settings import WorkerSettings


def first_step(coro: Any) -> Any:
    """What the drain loop does: run the coroutine up to its first wait; return what it yielded."""
    try:
        return coro.send(None)
    except StopIteration:  # pragma: no cover - the tests below always wait
        raise AssertionError("expected the coroutine to wait") from None


def test_a_coroutine_that_does_not_wait_completes_in_its_first_step() -> None:
    async def deliver(log: list[str]) -> str:
        log.append("put")
        return "done"

    log: list[str] = []
    coro = deliver(log)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == "done" and log == ["put"]


def test_resume_continues_after_each_wait_and_returns_the_result() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        seen: list[Any] = []

        async def deliver() -> str:
            seen.append(await a)
            await asyncio.sleep(0)  # a bare yield (None) in between
            seen.append(await b)
            return "delivered"

        coro = deliver()
        blocked_on = first_step(coro)
        assert blocked_on is a
        task = asyncio.ensure_future(finish(coro, blocked_on))
        await asyncio.sleep(0)
        assert not task.done() and seen == []
        a.set_result(1)
        await asyncio.sleep(0.01)
        assert seen == [1] and not task.done()
        b.set_result(2)
        assert await task == "delivered"
        assert seen == [1, 2]

    asyncio.run(main())


def test_cancelling_the_wait_is_thrown_into_the_callback() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        cleaned: list[str] = []

        async def deliver() -> None:
            try:
                await gate
            finally:
                cleaned.append("finally ran")

        coro = deliver()
        task = asyncio.ensure_future(finish(coro, first_step(coro)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["finally ran"]
        assert gate.cancelled()  # the task cancelled what the callback waited on, as for any task

    asyncio.run(main())


def test_a_callback_that_catches_the_cancellation_can_finish() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()

        async def deliver() -> str:
            try:
                await gate
            except asyncio.CancelledError:
                await asyncio.sleep(0)
                return "gave up cleanly"
            return "delivered"

        coro = deliver()
        task = asyncio.ensure_future(finish(coro, first_step(coro)))
        await asyncio.sleep(0)
        task.cancel()
        assert await task == "gave up cleanly"

    asyncio.run(main())


def test_an_error_after_the_wait_propagates() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()

        async def deliver() -> None:
            await gate
            raise ValueError("decode failed")

        coro = deliver()
        task = asyncio.ensure_future(finish(coro, first_step(coro)))
        gate.set_result(None)
        with pytest.raises(ValueError, match="decode failed"):
            await task

    asyncio.run(main())


def test_the_worker_app_uses_the_fast_drain_consumer_only_when_turned_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fast = create_app(WorkerSettings.load(data_dir=tmp_path / "a", worker_id="drain-a", fast_drain=True))
    assert type(fast.consumer) is FastDrainConsumer
    stock = create_app(WorkerSettings.load(data_dir=tmp_path / "b", worker_id="drain-b", fast_drain=False))
    assert type(stock.consumer) is SeekSafeConsumer  # Faust's own loop, with the seek fix
    assert isinstance(fast.consumer, SeekSafeConsumer)
    assert isinstance(stock.consumer, AIOKafkaConsumer)  # a subclass of Faust's own consumer
    default = create_app(WorkerSettings.load(data_dir=tmp_path / "e", worker_id="drain-e"))
    assert type(default.consumer) is FastDrainConsumer  # on by default


def test_installing_after_the_consumer_exists_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streams.drain import install

    app = create_app(WorkerSettings.load(data_dir=tmp_path / "c", worker_id="drain-c", fast_drain=False))
    app.consumer  # noqa: B018 - creates it
    with pytest.raises(RuntimeError, match="already exists"):
        install(app)


def test_another_faust_drain_loop_keeps_fausts_own_with_a_warning(tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import faust

    import streams.drain as drain

    if faust.__version__ == drain.FAUST_DRAIN_VERSION:
        assert drain.faust_loop_matches()  # the release the loop was copied from is recognised
    monkeypatch.setattr(drain, "FAUST_DRAIN_SHA256", "0" * 64)  # as if Faust's loop had changed
    with caplog.at_level("WARNING", logger="streams.drain"):
        app = create_app(WorkerSettings.load(data_dir=tmp_path / "d", worker_id="drain-d", fast_drain=True))
    assert type(app.consumer) is SeekSafeConsumer
    assert "using Faust's own loop" in caplog.text


# ---------------------------------------------------------------- the loop when the flow stops mid-batch
#
# Regression for the fast drain's lost events: Faust's recovery awaits ``perform_seek`` with the flow
# running; records handed over meanwhile, and the rest of the stale batch after the seek, left a false
# gap (counted as acknowledged) while ``flow_control.resume()`` cleared the queued events. Kafka is not
# needed to pin the loop's rules: getmany and the conductor callback are replaced by lists below.

def _consumer(tmp_path: Any, name: str) -> FastDrainConsumer:
    app = create_app(WorkerSettings.load(data_dir=tmp_path / name, worker_id=f"drain-{name}", fast_drain=True))
    consumer = app.consumer
    assert isinstance(consumer, FastDrainConsumer)
    return consumer


class _Msg:
    def __init__(self, topic: str, offset: int) -> None:
        self.topic, self.offset = topic, offset


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


TP_IN = TP("in", 0)


def _drain_offsets_0_to_5(tmp_path: Any, name: str, make_callback: Callable[[FastDrainConsumer], Any]) -> FastDrainConsumer:
    """Build a fast-drain consumer and drive ``_drain_messages`` over one getmany batch of offsets 0..5 of
    :data:`TP_IN`, handing each to ``make_callback(consumer)``; then stop it. All inside one ``asyncio.run``:
    the consumer's events must belong to the loop that drives it."""

    async def scenario() -> FastDrainConsumer:
        consumer = _consumer(tmp_path, name)
        calls = [0]

        async def getmany(timeout: float) -> Any:
            calls[0] += 1
            if calls[0] > 1:
                consumer._stopped.set()  # noqa: SLF001 - ends the loop after the batch
                return
            for offset in range(6):
                yield TP_IN, _Msg(TP_IN.topic, offset)

        consumer.getmany = getmany  # type: ignore[method-assign]
        consumer.callback = make_callback(consumer)  # type: ignore[misc]
        consumer.resume_flow()
        await asyncio.wait_for(consumer._drain_messages(_Fetcher()), 5)  # noqa: SLF001
        return consumer

    return asyncio.run(scenario())


def test_a_batch_stops_at_the_first_message_after_the_flow_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    delivered: list[int] = []

    def make_callback(consumer: FastDrainConsumer) -> Any:
        async def callback(message: Any) -> None:
            delivered.append(message.offset)
            if message.offset == 2:
                consumer.stop_flow()  # what perform_seek / a revoke does while the batch runs
        return callback

    consumer = _drain_offsets_0_to_5(tmp_path, "stop", make_callback)
    assert delivered == [0, 1, 2]
    assert consumer._read_offset[TP_IN] == 2  # noqa: SLF001 - 3.. were not read: a seek re-reads them


def test_a_handoff_cancelled_by_the_stop_is_not_marked_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    delivered: list[int] = []

    def make_callback(consumer: FastDrainConsumer) -> Any:
        async def callback(message: Any) -> None:
            if message.offset == 3:  # the agent's queue is full: the hand-off waits, then the flow stops
                asyncio.get_running_loop().call_later(0.01, consumer.stop_flow)
                await asyncio.sleep(10)
            delivered.append(message.offset)
        return callback

    consumer = _drain_offsets_0_to_5(tmp_path, "cancel", make_callback)
    assert delivered == [0, 1, 2]
    assert consumer._read_offset[TP_IN] == 2  # noqa: SLF001 - offset 3 was never delivered
    assert consumer.handoff_waits == 1 and consumer.handoffs_abandoned == 1


def test_perform_seek_stops_the_flow_before_it_seeks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    consumer = _consumer(tmp_path, "seek")
    consumer.resume_flow()
    seen: list[bool] = []

    async def seek_to_committed() -> dict[Any, int]:
        seen.append(consumer.flow_active)
        return {}

    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    asyncio.run(consumer.perform_seek())
    assert seen == [False]  # no record is handed over while the seek moves the read offsets back
    assert not consumer.flow_active  # recovery resumes it after the seek, as before


class _PositionThread:
    """The consumer thread's seeks as aiokafka applies them: ``seek`` sets a position at once, while
    ``seek_to_beginning`` leaves it unset (awaiting a reset) until the fetcher looks the offset up, and
    reading an unset position asserts (what Faust's ``verify_event_path`` does)."""

    def __init__(self, earliest: dict[Any, int]) -> None:
        self.earliest, self.positions = earliest, {}  # type: dict[Any, int], dict[Any, int | None]

    async def earliest_offsets(self, *partitions: Any) -> dict[Any, int]:
        return {tp: self.earliest[tp] for tp in partitions}

    async def seek_wait(self, partitions: dict[Any, int]) -> None:
        self.positions.update(partitions)

    async def seek_to_beginning(self, *partitions: Any) -> None:
        self.positions.update(dict.fromkeys(partitions))

    def position(self, tp: Any) -> int:
        position = self.positions[tp]
        assert position is not None
        return position


def test_perform_seek_sends_partitions_without_a_commit_to_their_beginning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """aiokafka's seek_to_committed leaves a partition with no committed offset (or 0) at its fetch position;
    after records were handed over and then cleared by the flow stop, that position is past events that were
    never applied, and acks of the next ones let Faust commit over them (lost in kill9-dir-deleted runs).
    The seek must send those partitions back to their beginning, and only those, with a position set at once
    (an unset one crashed a worker in Faust's verify_event_path)."""
    consumer = _consumer(tmp_path, "seek-none")
    tp_committed, tp_none, tp_zero = TP("in", 0), TP("in", 1), TP("in", 2)
    thread = _PositionThread({tp_none: 0, tp_zero: 40})  # tp_zero's first records were deleted by retention

    async def seek_to_committed() -> dict[Any, Any]:
        thread.positions[tp_committed] = 120
        return {tp_committed: 120, tp_none: None, tp_zero: 0, TP("x-sequences-changelog", 1): None}

    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    consumer._thread = thread  # type: ignore[assignment]  # noqa: SLF001
    # the agents' topics acknowledge (Faust commits their offsets); changelogs do not and are not rewound
    consumer.app.topics.acks_enabled_for = lambda topic: topic == "in"  # type: ignore[method-assign]
    consumer._read_offset[tp_none] = 3199  # noqa: SLF001 - handed over before the stop
    asyncio.run(consumer.perform_seek())
    assert {tp: thread.position(tp) for tp in thread.positions} == {tp_committed: 120, tp_none: 0, tp_zero: 40}
    assert consumer._read_offset[tp_committed] == 120  # noqa: SLF001
    assert consumer._read_offset[tp_none] is None  # noqa: SLF001 - re-read from the beginning, no gap
    assert consumer._read_offset[tp_zero] == 0  # noqa: SLF001


def test_the_event_path_check_skips_a_position_that_awaits_a_reset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Faust's periodic slow-processing check reads the fetch position; while aiokafka resets it (a fresh
    assignment, an out-of-range fetch) that read asserts, and the check must not take the worker down."""
    consumer = _consumer(tmp_path, "verify")
    thread = _PositionThread({})
    asyncio.run(thread.seek_to_beginning(TP_IN))
    checked: list[int] = []
    thread.verify_event_path = lambda now, tp: checked.append(thread.position(tp))  # type: ignore[attr-defined]
    consumer._thread = thread  # type: ignore[assignment]  # noqa: SLF001
    consumer.verify_event_path(0.0, TP_IN)  # awaiting its reset: skipped
    thread.positions[TP_IN] = 7
    consumer.verify_event_path(1.0, TP_IN)
    assert checked == [7]


TP_QUIET = TP("quiet", 0)  # a partition that stays active and has no records (the reroute / daily topics)


def _fetch_timeouts(tmp_path: Any, name: str, hold_back: set[TP], active: set[TP]) -> tuple[list[float], float]:
    """``_wait_next_records(1.0)`` on a fast-drain consumer whose ``active`` partitions are assigned and whose
    ``hold_back`` ones were taken out of the fetch by a full agent buffer; the partitions come back 20 ms
    later. Returns the timeouts handed to the (stubbed) fetch and the seconds the call took."""

    async def scenario() -> tuple[list[float], float]:
        consumer = _consumer(tmp_path, name)
        consumer.resume_flow()
        consumer._set_active_tps(active)  # noqa: SLF001
        for tp in hold_back:
            consumer.on_buffer_full(tp)
        timeouts: list[float] = []

        async def _getmany(active_partitions: Any, timeout: float) -> dict[Any, Any]:
            timeouts.append(timeout)
            return {}

        consumer._getmany = _getmany  # type: ignore[method-assign]  # noqa: SLF001
        for tp in hold_back:
            asyncio.get_running_loop().call_later(0.02, consumer.on_buffer_drop, tp)
        t0 = time.monotonic()
        await consumer._wait_next_records(1.0)  # noqa: SLF001
        return timeouts, time.monotonic() - t0

    return asyncio.run(scenario())


def test_the_fetch_waits_briefly_while_a_partition_is_held_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Faust's fetch waits up to 1 s for records of the partitions still active; with the input partition
    held back for back-pressure, that second is what the agent spent idle after its buffer drained."""
    timeouts, _ = _fetch_timeouts(tmp_path, "held", hold_back={TP_IN}, active={TP_IN, TP_QUIET})
    assert timeouts == [HELD_BACK_FETCH_WAIT_S]


def test_the_fetch_wait_is_fausts_when_nothing_is_held_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    timeouts, _ = _fetch_timeouts(tmp_path, "free", hold_back=set(), active={TP_IN, TP_QUIET})
    assert timeouts == [1.0]


def test_with_every_partition_held_back_the_fetch_resumes_when_one_comes_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Faust sleeps a whole second when no partition is active; here the wait ends at ``on_buffer_drop``."""
    timeouts, took = _fetch_timeouts(tmp_path, "all", hold_back={TP_IN}, active={TP_IN})
    assert timeouts == []  # nothing to fetch from while none is active
    assert took < 0.5


def _fetch_max_wait_of_the_worker_consumer(tmp_path, name: str, **overrides: Any) -> int:  # type: ignore[no-untyped-def]
    """The ``fetch_max_wait_ms`` of the aiokafka consumer the worker's consumer thread builds (not started)."""
    app = create_app(WorkerSettings.load(data_dir=tmp_path / name, worker_id=f"fetch-{name}", **overrides))
    thread = app.consumer._thread  # noqa: SLF001

    async def build() -> int:
        consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001
        return int(consumer._fetch_max_wait_ms)  # noqa: SLF001

    assert isinstance(thread, WorkerConsumerThread)
    return asyncio.run(build())


def test_the_worker_consumer_fetches_with_the_configured_broker_wait(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Faust hard-codes a 1500 ms broker-side fetch wait; a fetch that holds only quiet partitions blocks every
    other fetch to that broker for that long (aiokafka: one fetch in flight per broker)."""
    assert _fetch_max_wait_of_the_worker_consumer(tmp_path, "default") == FETCH_MAX_WAIT_MS == 50
    assert _fetch_max_wait_of_the_worker_consumer(tmp_path, "custom", fetch_max_wait_ms=200) == 200
    assert _fetch_max_wait_of_the_worker_consumer(tmp_path, "stock", fast_drain=False) == 50  # Faust's own loop too


def test_aiokafka_builds_its_fetcher_from_the_attribute_the_thread_sets() -> None:
    """The wait is set on aiokafka's private ``_fetch_max_wait_ms``, which ``start()`` hands to its Fetcher: an
    aiokafka release that renames it makes this fail (the worker would only log a warning)."""
    import inspect

    import aiokafka

    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
