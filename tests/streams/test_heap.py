"""streams.heap: freezing the start-up heap and timing each garbage collection."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.heap import GcPauseRecorder, freeze_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_freeze_moves_the_live_heap_out_of_the_collectors_reach(unfrozen: None) -> None:
    keep = [[i] for i in range(5000)]  # live container objects: frozen
    tracked_before = len(gc.get_objects())
    _Cycle()  # garbage: collected first, never frozen
    heap = freeze_heap()
    assert heap.objects == gc.get_freeze_count() >= 5000
    assert heap.seconds >= 0
    # a full collection now walks only what was created since
    assert len(gc.get_objects()) < tracked_before // 10
    assert not any(isinstance(o, _Cycle) for o in gc.get_objects())
    gc.unfreeze()
    assert len(gc.get_objects()) >= len(keep)


class _Plain:
    pass


def test_frozen_objects_still_die_by_refcount_and_new_garbage_is_still_collected(unfrozen: None) -> None:
    obj = _Plain()
    ref = weakref.ref(obj)
    freeze_heap()
    del obj  # frozen, but freed as soon as its last reference goes
    assert ref() is None
    collected_before = gc.collect()
    assert collected_before == 0
    for _ in range(10):
        _Cycle()
    assert gc.collect() >= 10  # each cycle (the object and its __dict__) is found


def test_the_recorder_times_each_collection_by_generation() -> None:
    seen: list[tuple[int, float]] = []
    ticks = iter([1.0, 1.25, 2.0, 2.5])
    recorder = GcPauseRecorder(lambda gen, s: seen.append((gen, s)), clock=lambda: next(ticks)).install()
    try:
        recorder.install()  # idempotent: one callback, not two
        assert gc.callbacks.count(recorder) == 1
        gc.disable()  # no automatic collection between the two explicit ones
        try:
            gc.collect(2)
            gc.collect(0)
        finally:
            gc.enable()
    finally:
        recorder.uninstall()
    assert seen == [(2, 0.25), (0, 0.5)]
    assert recorder not in gc.callbacks
