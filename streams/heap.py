"""The worker's Python heap and its garbage collector: freeze the start-up heap, time every collection.

Why (measured, ``bench.run --only api``, AMD EPYC, one worker at 50% of its max rate): the worker holds
~265k objects tracked by the cyclic GC once it is up (Faust, aiokafka, aiohttp, numpy; more with torch). A
collection of the oldest generation walks all of them and held the event loop for 120-160 ms; 2 of 11 runs had
one in their 15 s load window. Every HTTP request that arrived meanwhile waited for it: at 200 requests/s that
is ~30 requests, the whole 1% tail of a 15 s run. With the heap frozen, a full collection in the load window
took 6 ms.

:func:`freeze_heap` runs one full collection and then :func:`gc.freeze` moves every surviving object into
the permanent generation, which no later collection walks (the tracked count drops to a few hundred).
The worker calls it once, the first time it is ready (after table recovery: start-up objects, the tables'
state and the models are all built by then). Objects created later are collected as usual. What the one full
collection costs (~0.1-0.2 s, once) is logged. ``ACTIONSTREAM_GC_FREEZE=false`` turns it off.

:class:`GcPauseRecorder` observes the duration of every collection, per generation, into
``actionstream_gc_pause_seconds{generation}`` (the GC holds the GIL, so a collection in any thread stops
the event loop as well).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["FrozenHeap", "GcPauseRecorder", "freeze_heap"]

log = logging.getLogger(__name__)


class FrozenHeap(NamedTuple):
    """What :func:`freeze_heap` did: objects now in the permanent generation, and the seconds it took."""

    objects: int
    seconds: float


def freeze_heap(clock: Callable[[], float] = time.perf_counter) -> FrozenHeap:
    """Collect every generation, then move all surviving objects to the permanent generation.

    Later collections skip the frozen objects (``gc.unfreeze()`` gives them back). The full collection first
    keeps today's garbage out of the permanent generation, where it would never be freed.
    """
    t0 = clock()
    gc.collect()
    gc.freeze()
    return FrozenHeap(gc.get_freeze_count(), clock() - t0)


class GcPauseRecorder:
    """Observe every garbage collection's duration, by generation, while installed.

    Args:
        observe: called as ``observe(generation, seconds)`` after each collection (any thread).
        clock: monotonic seconds.
    """

    def __init__(self, observe: Callable[[int, float], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self._observe = observe
        self._clock = clock
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # the GC runs one collection at a time, holding the GIL: one start slot is enough
        if phase == "start":
            self._start = self._clock()
        else:
            self._observe(int(info["generation"]), self._clock() - self._start)

    def install(self) -> GcPauseRecorder:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def uninstall(self) -> None:
        while self in gc.callbacks:
            gc.callbacks.remove(self)
