"""The benchmark sections (issue 7). Each takes the shared :class:`Ctx` and fills one report Section.

A section that needs a piece that has not landed raises :class:`Unavailable`; ``bench.run`` prints
``not available: <reason>``. Nothing here invents a figure: every value comes from a measurement made
in this run, and ratios are taken between figures of this run only.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.env import BenchEnv, topic_end_offsets
from bench.procs import Proc, keep_logs, rss_bytes, start_module
from bench.report import Report, Section
from bench.workload import Workload, make_events
from streams.broker import free_port

log = logging.getLogger(__name__)

# issue 7 targets
PLATFORM_VS_FRAMEWORK = 0.80
PLATFORM_VS_NAIVE = 2.5
SCALE_OUT = 1.7
SCALE_OUT_EVENTS = 200_000  # the scale-out rounds' own topic
SCALE_OUT_ROUNDS = 3
FRESHNESS_P99_MS = 250.0
FEATURES_P99_MS = 5.0


class Unavailable(Exception):
    """A piece this section needs has not landed (the message says which)."""


@dataclass
class Ctx:
    env: BenchEnv
    report: Report
    out_dir: Path
    quick: bool
    n: int
    users: int
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def workload(self) -> Workload:
        if "workload" not in self.cache:
            self.cache["workload"] = make_events(self.n, self.users)
        return self.cache["workload"]  # type: ignore[no-any-return]

    @property
    def topic(self) -> str:
        """The shared pre-filled input topic (every throughput section reads the same events)."""
        if "topic" not in self.cache:
            self.cache["topic"] = self.env.prefilled("bench-actions", self.workload)
        return self.cache["topic"]  # type: ignore[no-any-return]


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{what} ({module}) has not landed: {exc}") from None


def _platform() -> Any:
    return _need("bench.platform_throughput", "the worker throughput driver")


# ------------------------------------------------------------------------------------------------ (a)

def ceiling(ctx: Ctx, sec: Section) -> None:
    from bench.ceiling import aiokafka_consume, kafka_python_consume, rocksdb_rmw, workload_note
    w, topic = ctx.workload, ctx.topic
    sec.notes.append(f"topic: {workload_note(w)}, {ctx.env.partitions} partitions")
    dt = aiokafka_consume(ctx.env.bootstrap, topic, w.n)
    sec.add("aiokafka consume + orjson.loads", w.n / dt, "events/s")
    dt = kafka_python_consume(ctx.env.bootstrap, topic, w.n)
    sec.add("kafka-python consume + orjson.loads", w.n / dt, "events/s")
    users, ops = (200, 5_000) if ctx.quick else (2_000, 50_000)
    for fmt, label in (("json", "JSON list of event dicts"), ("blob", "packed blob, update_blob")):
        r = rocksdb_rmw(ctx.env.dir(f"rmw-{fmt}") / "db", users=users, ops=ops, fmt=fmt)
        sec.add(f"rocksdict read-modify-write, {label}", r["ops_per_s"], "ops/s")
        sec.add(f"stored bytes per user (100 actions), {label}", r["bytes_per_user"], "B")
    j = sec.get("stored bytes per user (100 actions), JSON list of event dicts")
    b = sec.get("stored bytes per user (100 actions), packed blob, update_blob")
    rj = sec.get("rocksdict read-modify-write, JSON list of event dicts")
    rb = sec.get("rocksdict read-modify-write, packed blob, update_blob")
    if j and b and rj and rb:
        sec.notes.append(f"packed blob vs JSON list: {j / b:.1f}× smaller, {rb / rj:.1f}× faster read-modify-write "
                         f"({users:,} users at the 100-action cap, {ops:,} updates)")


# ------------------------------------------------------------------------------------------------ (b) (c)

def naive(ctx: Ctx, sec: Section) -> None:
    from bench.faust_baselines import run_faust_app
    w, topic = ctx.workload, ctx.topic
    r = run_faust_app("naive", bootstrap=ctx.env.bootstrap, topic=topic, n=w.n, scratch=ctx.env.dir("naive"),
                      timeout=120 + w.n / 100, budget_s=20 if ctx.quick else 90)
    if not r.complete:
        sec.notes.append(f"time-boxed: the rate is over the first {r.events:,} of {w.n:,} events ({r.seconds:.0f} s)")
    sec.add("naive agent: decode + append to a per-user JSON list, RocksDB table", r.events_per_s, "events/s",
            note=f"{w.users:,} users")
    sec.add("naive agent, per CPU-second of its process", r.events_per_cpu_s, "events/CPU-s")
    sec.add("start-up to first event", r.startup_s, "s")
    sec.notes.append("one table write (and one changelog record carrying the whole list) per event; "
                     "measurements.md: ~1.85k events/s on a machine like this one")


FAST_DRAIN_LABEL = "decode-only agent, per event, worker's drain loop (streams.drain)"


def framework(ctx: Ctx, sec: Section) -> None:
    from bench.faust_baselines import run_faust_app
    from streams.drain import faust_loop_matches
    w, topic = ctx.workload, ctx.topic
    variants = [(0, False, "decode-only agent, per event"),
                (2000, False, "decode-only agent, stream.take(2000, 0.05)")]
    if faust_loop_matches():
        variants.append((0, True, FAST_DRAIN_LABEL))
    for take, fast_drain, label in variants:
        r = run_faust_app("decode_only", bootstrap=ctx.env.bootstrap, topic=topic, n=w.n, take=take,
                          fast_drain=fast_drain, scratch=ctx.env.dir("framework"), timeout=120 + w.n / 100,
                          budget_s=20 if ctx.quick else 60)
        if not r.complete:
            sec.notes.append(f"{label}: time-boxed, rate over the first {r.events:,} of {w.n:,} events")
        sec.add(label, r.events_per_s, "events/s")
        sec.add(f"{label}, per CPU-second", r.events_per_cpu_s, "events/CPU-s")
    sec.notes.append("no state at all: this bounds any Faust agent in one process on this CPU "
                     "(measurements.md: 5.4–6.3k events/s)")
    if len(variants) > 2:
        sec.notes.append("the last rows run the same agent on the worker's consumer drain loop (streams.drain: no "
                         "four asyncio tasks per message); they are not part of the stock framework ceiling "
                         "above, which the platform's ratio uses")
    else:
        sec.notes.append("the worker's drain loop (streams.drain) does not apply to this Faust release; "
                         "its row is left out")


def _framework_ceiling(report: Report, per_cpu: bool = False) -> float | None:
    suffix = ", per CPU-second" if per_cpu else ""
    vals = [v for v in (report.figure("framework", "decode-only agent, per event" + suffix),
                        report.figure("framework", "decode-only agent, stream.take(2000, 0.05)" + suffix)) if v]
    return max(vals) if vals else None


# ------------------------------------------------------------------------------------------------ (d)

def platform(ctx: Ctx, sec: Section) -> None:
    mod = _platform()
    w, topic = ctx.workload, ctx.topic
    one = mod.measure_platform(ctx.env, topic, w.n, workers=1, timeout=90 + w.n / 300)
    ctx.cache["max_rate"] = one.events_per_s
    sec.add("one worker, end to end", one.events_per_s, "events/s",
            note="consume → validate → route → sequence update in RocksDB → changelog")
    sec.add("worker start-up to first event", one.ready_s, "s")
    cpu_rate = getattr(one, "events_per_cpu_s", 0.0)
    if cpu_rate:
        sec.add("one worker, per CPU-second of its process", cpu_rate, "events/CPU-s")
    if one.rerouted:
        sec.notes.append(f"{one.rerouted:.0f} events were rerouted to their owner partition")
    fw = _framework_ceiling(ctx.report)
    nv = ctx.report.figure("naive", "naive agent: decode + append to a per-user JSON list, RocksDB table")
    aio = ctx.report.figure("ceiling", "aiokafka consume + orjson.loads")
    if fw:
        r = one.events_per_s / fw
        sec.add("ratio to the framework ceiling", r * 100, "%", target=f"≥ {PLATFORM_VS_FRAMEWORK:.0%}",
                ok=r >= PLATFORM_VS_FRAMEWORK, note="best decode-only variant of this run")
    else:
        sec.notes.append("ratio to the framework ceiling: not available (section framework not run)")
    fd = ctx.report.figure("framework", FAST_DRAIN_LABEL)
    if fd:
        sec.add("ratio to the decode-only agent on the worker's drain loop", one.events_per_s / fd * 100, "%",
                note="what the worker's own work costs over an agent that does nothing")
    if nv:
        r = one.events_per_s / nv
        sec.add("ratio to the naive baseline", r, "×", target=f"≥ {PLATFORM_VS_NAIVE}×", ok=r >= PLATFORM_VS_NAIVE)
    else:
        sec.notes.append("ratio to the naive baseline: not available (section naive not run)")
    if aio:
        sec.add("ratio to the bare aiokafka ceiling", one.events_per_s / aio * 100, "%")
    fw_cpu = _framework_ceiling(ctx.report, per_cpu=True)
    nv_cpu = ctx.report.figure("naive", "naive agent, per CPU-second of its process")
    if cpu_rate and fw_cpu:
        sec.add("ratio to the framework ceiling, per CPU-second", cpu_rate / fw_cpu * 100, "%",
                note="CPU-normalised: robust when the machine is busy")
    if cpu_rate and nv_cpu:
        sec.add("ratio to the naive baseline, per CPU-second", cpu_rate / nv_cpu, "×")
    if ctx.quick:
        sec.notes.append("scale-out (2 workers) skipped in --quick")
        return
    _scale_out(ctx, sec, mod)


def _measure_group(ctx: Ctx, sec: Section, mod: Any, topic: str, n: int, workers: int) -> Any:
    """One :func:`measure_platform` run; a stall keeps the workers' logs and stacks, is noted and measured again."""
    wall0 = time.time()
    try:
        return mod.measure_platform(ctx.env, topic, n, workers=workers, timeout=90 + n / 300)
    except mod.Stalled as exc:
        # a stall is a finding, not a figure: keep the workers' logs and stack dumps, say so, measure again once
        kept = keep_logs(ctx.env.tmp, ctx.out_dir / f"stalled-platform-{workers}-workers", since=wall0)
        first = str(exc).splitlines()[0]
        sec.notes.append(f"a {workers}-worker run STALLED ({first}); its {kept} process logs with the workers' thread "
                         f"and task stacks are in stalled-platform-{workers}-workers/; the figure is from a second run")
        log.warning("%d-worker run stalled, measuring again: %s", workers, first)
        return mod.measure_platform(ctx.env, topic, n, workers=workers, timeout=90 + n / 300)


def _scale_out(ctx: Ctx, sec: Section, mod: Any) -> None:
    """2 workers vs 1: alternating rounds (1, 2, 1, 2, ...) on a topic of their own, the median round.

    On the shared 100k topic two workers finish in ~4 s, and one such run moved the ratio between 1.37x and 1.96x
    with the same code in one session. Each round here times one worker, then two, on the same longer topic, so a
    round's ratio compares runs made under the same machine load.

    The scale-out topic deals its events to the users round-robin, so its 8 partitions hold about the same
    number of events (200k: 24.2k to 26.4k per partition). On the shared topic the users' activity is Zipf-skewed
    and its partitions differ by up to 1.7x (200k events: 19.5k to 33.1k per partition; the two workers' halves
    93k and 107k): the worker with more would drain the difference alone at the end, which measures the
    workload's key skew, not the second worker. The rate while both workers had work (until the first ran out)
    is reported next to the whole drain, with the seconds the other went on alone."""
    w = ctx.workload
    n = max(SCALE_OUT_EVENTS, w.n)
    topic = ctx.env.prefilled("bench-scale", make_events(n, w.users, seed=13, uniform_users=True))
    rounds = []
    for i in range(SCALE_OUT_ROUNDS):
        one = _measure_group(ctx, sec, mod, topic, n, 1)
        two = _measure_group(ctx, sec, mod, topic, n, 2)
        rounds.append((one, two, two.all_busy_events_per_s / one.events_per_s, two.events_per_s / one.events_per_s))
        log.info("scale-out round %d/%d: one %.0f, two %.0f events/s (%.0f while both had work): %.2fx (%.2fx)",
                 i + 1, SCALE_OUT_ROUNDS, one.events_per_s, two.events_per_s, two.all_busy_events_per_s,
                 rounds[-1][3], rounds[-1][2])
    one, two, busy, r = sorted(rounds, key=lambda x: x[3])[len(rounds) // 2]  # the median round (odd count)
    sec.add("two workers (2 processes, one group), end to end", two.events_per_s, "events/s",
            note=f"the median of {SCALE_OUT_ROUNDS} alternating rounds, on the scale-out topic (balanced partitions)")
    sec.add("one worker in the same round, same topic", one.events_per_s, "events/s")
    sec.add(f"scale-out: 2 workers / 1 worker, median of {SCALE_OUT_ROUNDS} alternating rounds", r, "×",
            target=f"≥ {SCALE_OUT}×", ok=r >= SCALE_OUT)
    sec.add("the same round while both workers had work (until the first ran out) / one worker", busy, "×",
            note=f"the other drained alone for the last {two.tail_s:.1f} s")
    for run, label in ((one, "one worker"), (two, "two workers")):
        if run.machine_busy_cores:
            sec.add(f"{label}: cores used by the worker processes", run.cpu_seconds / run.seconds, "cores")
            sec.add(f"{label}: cores used by the broker", run.broker_cpu_seconds / run.seconds, "cores")
            sec.add(f"{label}: cores busy on the whole machine", run.machine_busy_cores, "cores",
                    note=f"of {os.cpu_count()}; a worker below 1 core while the machine is near its core count "
                         "was waiting for a core")
    sec.notes.append("scale-out rounds (one worker, two workers, ratio; while both had work: two workers, ratio; the "
                     "tail one worker drained alone): " + "; ".join(
        f"{o.events_per_s:,.0f}, {t.events_per_s:,.0f}, {d:.2f}×; {t.all_busy_events_per_s:,.0f}, {x:.2f}×; "
        f"{t.tail_s:.1f} s" for o, t, x, d in rounds))
    if two.replayed:
        sec.notes.append(f"two workers: {two.replayed:,} events were handled a second time after the start-up "
                         "rebalance (read before it but not yet committed: every partition restarts from its committed "
                         "offset, on its new owner or its old one); they are work done, not counted as events")
    sec.notes.append(f"{w.n:,} pre-filled events (scale-out: {n:,}, {n // w.users} per user, on a topic of their "
                     f"own), {w.users:,} users; timed from the first poll at which every worker had handled an event "
                     f"(two workers: after the group's start-up rebalance; {two.events:,} events counted) to the last, "
                     "once the group had committed every input offset (polling /metrics every 50 ms); the broker and "
                     "the benchmark share the same 2 cores")


# ------------------------------------------------------------------------------------------------ workers

def _start_group(ctx: Ctx, topic: str, workers: int = 1, worker_id: str | None = None,
                 scratch: Path | None = None) -> tuple[list[tuple[Proc, int]], str, Path]:
    mod = _platform()
    worker_id = worker_id or f"bench-{uuid.uuid4().hex[:6]}"
    scratch = scratch or ctx.env.dir(worker_id)
    procs = mod.start_workers(ctx.env.bootstrap, topic, scratch, workers=workers, partitions=ctx.env.partitions,
                              worker_id=worker_id)
    return procs, worker_id, scratch


def _stop(procs: list[tuple[Proc, int]]) -> None:
    for p, _ in procs:
        p.stop()


def _max_rate(ctx: Ctx) -> float:
    if "max_rate" not in ctx.cache:
        w = ctx.workload
        ctx.cache["max_rate"] = _platform().measure_platform(ctx.env, ctx.topic, w.n, workers=1,
                                                             timeout=90 + w.n / 300).events_per_s
        ctx.report.params["max_rate_source"] = "measured by the freshness section"
    return float(ctx.cache["max_rate"])


# ------------------------------------------------------------------------------------------------ (e)

def _missing_note(user_of: dict[int, str], found: set[int], max_len: int) -> str:
    """Why sent events are in no changelog record: a user's sequence keeps its newest ``max_len`` actions and the
    worker writes one record per user per outbox flush, so a user sent more than ``max_len`` events between two
    flushes has the oldest of them pushed out before any record holds them (not lost: replaced, as designed)."""
    missing = [k for k in user_of if k not in found]
    if not missing:
        return ""
    per_user = Counter(user_of.values())
    busy = sum(1 for k in missing if per_user[user_of[k]] > max_len)
    top = per_user.most_common(1)[0]
    return (f"; of the {len(missing):,} others, {busy:,} belong to users sent more than {max_len} events in the "
            f"phase (the busiest, {top[0]}, {top[1]:,}): a sequence keeps its newest {max_len} actions and the "
            "worker writes one record per user per outbox flush, so actions pushed out between two flushes are "
            "in no record")


def freshness(ctx: Ctx, sec: Section) -> None:
    from bench.live import (
        changelog_freshness,
        histogram_quantiles,
        paced_produce,
        scrape,
        wait_handled,
        wait_ready,
    )
    from streams.settings import WorkerSettings
    max_rate = _max_rate(ctx)
    max_len = WorkerSettings.load().sequence_length  # what the bench's workers keep (same environment)
    topic = ctx.env.topic("bench-fresh")
    procs, worker_id, _ = _start_group(ctx, topic)
    seconds = 4.0 if ctx.quick else 15.0
    rows: list[tuple[float, np.ndarray, list[float | None]]] = []
    try:
        wait_ready(procs)
        port = procs[0][1]
        warm = paced_produce(ctx.env.bootstrap, topic, rate=50, seconds=1.0, seed=99)  # warm-up: group, caches
        total = len(warm.sent)
        wait_handled(port, total, 60)
        for frac in ((0.5,) if ctx.quick else (0.25, 0.5, 0.9)):
            before = scrape(port)
            run = paced_produce(ctx.env.bootstrap, topic, rate=frac * max_rate, seconds=seconds, seed=int(frac * 100))
            total += len(run.sent)
            # a worker that fell behind must finish this phase before it is measured (and before the next one)
            backlog_s = wait_handled(port, total, 120)
            time.sleep(1.5)  # the outbox flushes changelog records at the next commit (1 s)
            after = scrape(port)
            if backlog_s > 1.0:
                sec.notes.append(f"at {frac:.0%}: the worker needed {backlog_s:.1f} s after the phase to drain its "
                                 "backlog: this rate is above what it sustains here")
            found: set[int] = set()
            lat = changelog_freshness(ctx.env.bootstrap, f"{worker_id}-sequences-changelog", run.sent, found)
            hq = histogram_quantiles(before, after, "actionstream_freshness_seconds", (0.5, 0.99), stage="sequence")
            rows.append((frac, lat, hq))
            pct = f"{frac:.0%}"
            label = f"at {pct} of max ({run.rate:,.0f} events/s)"
            is50 = frac == 0.5
            if hq[0] is not None and hq[1] is not None:
                sec.add(f"{label}: p50, stored (worker histogram)", hq[0] * 1e3, "ms")
                sec.add(f"{label}: p99, stored (worker histogram)", hq[1] * 1e3, "ms",
                        target=f"< {FRESHNESS_P99_MS:.0f} ms" if is50 else "",
                        ok=(hq[1] * 1e3 < FRESHNESS_P99_MS) if is50 else None)
            else:
                sec.notes.append(f"at {pct}: the worker's freshness histogram recorded nothing")
            if len(lat):
                sec.add(f"{label}: p50, in the changelog (external)", float(np.percentile(lat, 50)), "ms")
                sec.add(f"{label}: p99, in the changelog (external)", float(np.percentile(lat, 99)), "ms")
            sec.notes.append(f"at {pct}: {len(lat):,} of {len(run.sent):,} events found in a changelog record"
                             + _missing_note(run.user_of, found, max_len))
    finally:
        _stop(procs)
    sec.notes.append(f"max rate = one worker's end-to-end figure ({max_rate:,.0f} events/s); events carry ts = the "
                     "wall clock at send (producer linger 2 ms included). 'stored' = the worker's "
                     "actionstream_freshness_seconds{stage=\"sequence\"} histogram (event ts → value written to "
                     "RocksDB, i.e. visible to the API), quantiles interpolated inside its buckets (0.1/0.25/0.5 s "
                     "around the target, like PromQL histogram_quantile); 'in the changelog' = timestamp of the first "
                     "changelog record holding the event − its ts, measured outside the worker (durable)")
    _plot_freshness(ctx, sec, rows)


def _plot_latency_cdfs(ctx: Ctx, sec: Section, lines: list[tuple[str, np.ndarray, str]], *, target_ms: float,
                       xlabel: str, counted: str, title: str, filename: str, p99_line: bool = False,
                       legend_fontsize: float | None = None) -> None:
    """Latency CDFs (log x), one ``(label, values in ms, line style)`` per line, with the p99 target drawn;
    saved to ``filename`` in the run's directory and listed with the section's plots. Empty series are left out."""
    lines = [line for line in lines if len(line[1])]
    if not lines:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, lat, style in lines:
        xs = np.sort(lat)
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label, ls=style)
    ax.axvline(target_ms, color="grey", ls="--", lw=1, label=f"p99 target {target_ms:.0f} ms")
    if p99_line:
        ax.axhline(0.99, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"fraction of {counted}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)
    path = ctx.out_dir / filename
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    sec.plots.append(str(path))


def _plot_freshness(ctx: Ctx, sec: Section, rows: list[tuple[float, np.ndarray, list[float | None]]]) -> None:
    _plot_latency_cdfs(ctx, sec, [(f"{frac:.0%} of max rate", lat, "-") for frac, lat, _ in rows],
                       target_ms=FRESHNESS_P99_MS,
                       xlabel="event time → first changelog record holding it (durable), ms", counted="events",
                       title="Freshness, measured outside the worker (one worker)", filename="freshness.png")


def realtime(ctx: Ctx, sec: Section) -> None:
    """TransAct realtime vectors on (random-weight, paper-sized checkpoint): drain cost and freshness per stage,
    through the realtime driver ``bench.realtime_freshness`` (backlog drain and live feed)."""
    mod = _need("bench.realtime_freshness", "the realtime-vector benchmark driver")
    _need("streams.realtime", "realtime TransAct vectors in the worker")
    scratch = ctx.env.dir("realtime")
    on = {"ACTIONSTREAM_REALTIME_CHECKPOINT": str(mod.write_checkpoint(scratch / "realtime.pt"))}
    w = ctx.workload
    res_on = mod.drain(ctx.env, ctx.topic, w.n, scratch, "on", on)
    sec.add("one worker with realtime vectors on, end to end", res_on["events_per_s"], "events/s",
            note=f"{res_on['encoder_batches']:.0f} encoder batches, mean {res_on['mean_batch'] or 0:.1f} sequences, "
                 f"{res_on['encoder_ms_per_batch'] or 0:.1f} ms per batch")
    off = ctx.report.figure("platform", "one worker, end to end")
    if off:
        sec.add("throughput with vectors on / off", res_on["events_per_s"] / off, "×",
                note="off = section (d) on the same topic")
    # 50% of THIS configuration's max (the drain above, vectors on): the encoder takes CPU from the stream, so
    # 50% of the vectors-off max can be most of what a worker with vectors on handles (3,590 of 5,579 events/s
    # at 04:53: its sequence p99 was 4.3 s, a backlog, not a freshness figure)
    rate = 0.5 * res_on["events_per_s"]
    lv = mod.live(ctx.env, scratch, min(ctx.users, 6000), rate, 4.0 if ctx.quick else 15.0, on)
    for stage in ("sequence", "realtime"):
        p50, p99 = lv.get(f"{stage}_p50_s"), lv.get(f"{stage}_p99_s")
        if p50 is None or p99 is None:
            sec.notes.append(f"live run: the {stage} stage recorded no freshness observation")
            continue
        sec.add(f"live at 50% of its max with vectors on ({rate:,.0f} events/s): {stage} p50", p50 * 1e3, "ms")
        sec.add(f"live at 50% of its max with vectors on ({rate:,.0f} events/s): {stage} p99", p99 * 1e3, "ms",
                target=f"< {FRESHNESS_P99_MS:.0f} ms" if stage == "sequence" else "",
                ok=(p99 * 1e3 < FRESHNESS_P99_MS) if stage == "sequence" else None)
    from streams.settings import WorkerSettings
    ws = WorkerSettings.load()  # the workers inherit this environment: read it as they do
    sec.notes.append(f"encoder: {f'its own process at niceness +{ws.encoder_nice}' if ws.encoder_process else 'a thread in the worker'} "
                     "(ACTIONSTREAM_ENCODER_PROCESS / _NICE)")
    sec.notes.append(f"live: {lv['sent']:,} events sent, {lv['accepted']:,.0f} accepted, "
                     f"{lv.get('realtime_observations', 0):,.0f} realtime vectors stored (mean encoder batch "
                     f"{lv.get('mean_batch') or 0:.1f}); freshness from the worker's histograms, bucket-interpolated; "
                     "model: paper-sized candidate-free TransAct with random weights (cost does not depend on them)")


# ------------------------------------------------------------------------------------------------ (f)

def api(ctx: Ctx, sec: Section) -> None:
    import asyncio  # noqa: F401 - paced producer runs in its own loop in a thread

    from bench.live import HttpLoad, histogram_quantiles, metric, paced_produce, scrape, wait_ready
    _need("streams.api", "the feature API")
    max_rate = _max_rate(ctx)
    topic = ctx.env.topic("bench-api")
    procs, _, _ = _start_group(ctx, topic)
    seconds = 4.0 if ctx.quick else 15.0
    req_rate = 100.0 if ctx.quick else 200.0
    try:
        wait_ready(procs)
        port = procs[0][1]
        seed_run = paced_produce(ctx.env.bootstrap, topic, rate=1000, seconds=1.0, users=500, seed=5)
        time.sleep(1.5)
        import threading
        bare_port = free_port()
        bare = start_module("bench.bare_http", [str(bare_port)], ctx.env.dir("bare-http") / "bare.log")
        procs.append((bare, bare_port))
        wait_ready([(bare, bare_port)], 30)
        idle = HttpLoad(port, seed_run.users, req_rate, seconds / 3).start()  # the same requests, no stream
        idle.join()

        def stream_at(fraction: float, secs: float, seed: int) -> threading.Thread:
            """The stream at ``fraction`` of the max rate, from a thread of this process (not started)."""
            return threading.Thread(target=paced_produce, args=(ctx.env.bootstrap, topic), daemon=True,
                                    kwargs={"rate": fraction * max_rate, "seconds": secs, "seed": seed})

        light = stream_at(0.25, seconds / 2 + 1.0, seed=7)
        light.start()
        time.sleep(0.5)
        quarter = HttpLoad(port, seed_run.users, req_rate, seconds / 2).start()  # a lighter stream
        quarter.join()
        light.join()
        stream = stream_at(0.5, 2 * seconds + 1.5, seed=6)
        before = scrape(port)
        stream.start()
        time.sleep(0.5)
        load = HttpLoad(port, seed_run.users, req_rate, seconds).start()
        load.join()
        after = scrape(port)
        floor = HttpLoad(bare_port, seed_run.users, req_rate, seconds).start()  # same stream, same client
        floor.join()
        stream.join()
    finally:
        _stop(procs)
    lat = np.asarray(load.latencies_ms)
    if not len(lat):
        raise RuntimeError(f"no successful request ({load.errors} errors)")
    ok = load.status.get(200, 0)
    sec.add("GET /v1/users/{id}/features: p50", float(np.percentile(lat, 50)), "ms")
    p99 = float(np.percentile(lat, 99))
    sec.add("GET /v1/users/{id}/features: p99", p99, "ms", target=f"< {FEATURES_P99_MS:.0f} ms",
            ok=p99 < FEATURES_P99_MS)
    hq = histogram_quantiles(before, after, "actionstream_http_request_duration_seconds", (0.5, 0.99),
                             route="/v1/users/{user_id}/features")
    if hq[0] is not None and hq[1] is not None:
        sec.add("the same, worker-side (its HTTP latency histogram, bucket-interpolated): p50", hq[0] * 1e3, "ms")
        sec.add("the same, worker-side: p99", hq[1] * 1e3, "ms")
    lag = histogram_quantiles(before, after, "actionstream_event_loop_lag_seconds", (0.5, 0.99))
    if lag[0] is not None and lag[1] is not None:
        from streams.metrics import LOOP_LAG_PROBE_INTERVAL_S
        sec.add(f"worker event-loop lag (a {LOOP_LAG_PROBE_INTERVAL_S * 1e3:.0f} ms timer's late wake-up) meanwhile: p50",
                lag[0] * 1e3, "ms")
        sec.add("worker event-loop lag: p99", lag[1] * 1e3, "ms",
                note="how long a ready request can wait behind code holding the worker's loop")
    full_count, full_s = (metric(after, f"actionstream_gc_pause_seconds_{k}", generation="2")
                          - metric(before, f"actionstream_gc_pause_seconds_{k}", generation="2") for k in ("count", "sum"))
    sec.add("worker: full garbage collections meanwhile", full_count, "",
            note=(f"{full_s * 1e3:.0f} ms in all; " if full_count else "")
            + f"start-up heap frozen: {'yes' if metric(after, 'actionstream_gc_frozen_objects') else 'no'} "
              "(streams.heap, ACTIONSTREAM_GC_FREEZE)")
    fl = np.asarray(floor.latencies_ms)
    if len(fl):
        sec.add("floor: a bare aiohttp server, same client, rate and stream: p50", float(np.percentile(fl, 50)), "ms")
        sec.add("floor: p99", float(np.percentile(fl, 99)), "ms",
                note="no Faust, no state: what loopback HTTP and process wake-ups on the shared cores cost here")
    il = np.asarray(idle.latencies_ms)
    if len(il):
        sec.add("the API alone, same client and rate, no stream: p50", float(np.percentile(il, 50)), "ms")
        sec.add("the API alone: p99", float(np.percentile(il, 99)), "ms",
                note=f"{len(il):,} requests to the same worker before the stream starts: the API's own cost, "
                     "without the stream's work on the worker's loop and the cores")
    ql = np.asarray(quarter.latencies_ms)
    if len(ql):
        sec.add(f"the same with the stream at 25% of max ({0.25 * max_rate:,.0f} events/s): p50",
                float(np.percentile(ql, 50)), "ms")
        sec.add("the same at 25% of max: p99", float(np.percentile(ql, 99)), "ms",
                note=f"{len(ql):,} requests; how the tail grows with the stream's load on the worker and the cores")
    _plot_latency_cdfs(ctx, sec, [(f"{label} (p99 {np.percentile(xs, 99):.1f} ms)", xs, style) for label, xs, style in (
        ("the API alone, no stream", il, "-"), ("stream at 25% of max", ql, "-"),
        ("stream at 50% of max (the target's condition)", lat, "-"), ("bare aiohttp floor, stream at 50%", fl, ":"))
        if len(xs)], target_ms=FEATURES_P99_MS, xlabel="GET /v1/users/{id}/features, client-side latency, ms",
        counted="requests", title="Feature API latency by stream load (one worker)", filename="features_latency.png",
        p99_line=True, legend_fontsize=8)
    sec.notes.append(f"{len(lat):,} requests at {req_rate:.0f}/s over one keep-alive connection, client-side "
                     f"latency; statuses {dict(sorted(load.status.items()))}, {load.errors} errors; the stream ran "
                     f"at 50% of max ({0.5 * max_rate:,.0f} events/s) meanwhile; {len(seed_run.users)} users queried")
    if ok != len(lat):
        sec.notes.append("some requests did not answer 200: see the statuses above")


def scoring(ctx: Ctx, sec: Section) -> None:
    mod = _need("bench.transact_inference", "the TransAct inference benchmark")
    mod.run(sec, threads=2, quick=ctx.quick, progress=False)


# ------------------------------------------------------------------------------------------------ (h) (g)

def _filled(ctx: Ctx) -> dict[str, Any]:
    """A worker group that processed users × ~110 uniform events (every user at the 100-action cap)."""
    if "filled" in ctx.cache:
        return ctx.cache["filled"]  # type: ignore[no-any-return]
    from bench.live import HANDLED_COUNTERS, handled, metric, scrape, wait_ready
    users = 50 if ctx.quick else 1000
    w = make_events(users * 110, users, seed=11, uniform_users=True, span_s=3600)
    topic = ctx.env.prefilled("bench-full", w)
    procs, worker_id, scratch = _start_group(ctx, topic)
    try:
        wait_ready(procs)
        port = procs[0][1]
        deadline = time.monotonic() + 60 + w.n / 300
        while True:
            if handled(scrape(port, HANDLED_COUNTERS)) >= w.n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not accept {w.n} events in time:\n{procs[0][0].tail()}")
            time.sleep(0.2)
        time.sleep(1.5)  # let the commit interval pass: changelog flushed, offsets committed
        rss = rss_bytes(procs[0][0].pid)
        keys = metric(scrape(port), "actionstream_table_keys", table="sequences")
    finally:
        _stop(procs)
    out = {"users": users, "events": w.n, "topic": topic, "worker_id": worker_id, "scratch": scratch,
           "rss": rss, "keys": keys, "user_ids": sorted({k.decode() for k in w.keys})}
    ctx.cache["filled"] = out
    return out


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def footprint(ctx: Ctx, sec: Section) -> None:
    from bench.live import metric  # noqa: F401
    f = _filled(ctx)
    users = f["users"]
    changelog = f"{f['worker_id']}-sequences-changelog"
    latest: dict[bytes, int] = {}
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=ctx.env.bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    try:
        tps = [TopicPartition(changelog, p) for p in sorted(c.partitions_for_topic(changelog) or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        while any(c.position(tp) < end[tp] for tp in tps):
            for recs in c.poll(timeout_ms=500, max_records=50_000).values():
                for r in recs:
                    if r.key is not None and not r.key.startswith(b"__faust"):
                        latest[r.key] = len(r.value or b"")
    finally:
        c.close()
    if latest:
        sec.add("stored value per user (packed sequence, 100 actions)", sum(latest.values()) / len(latest), "B",
                note="latest changelog value per user = the RocksDB value")
    tables = [p for p in f["scratch"].rglob("*.db") if p.is_dir() and p.name.startswith("sequences")]
    if tables:
        total = sum(_dir_bytes(t) for t in tables)
        sec.add("RocksDB files per user (on disk, all table partitions)", total / users, "B",
                note=f"{len(tables)} partition DBs, incl. WAL/LOG/MANIFEST overhead")
    if f["rss"]:
        sec.add("worker RSS after processing", f["rss"] / 2**20, "MiB", note=f"{users:,} users")
    sec.notes.append(f"{users:,} users × ~110 uniform events ({f['events']:,}), so every user is at the "
                     f"100-action cap; the worker's table_keys gauge (a RocksDB estimate) said {f['keys']:.0f}")


def recovery(ctx: Ctx, sec: Section) -> None:
    from bench.live import metric, scrape, sequence_lengths, wait_ready
    f = _filled(ctx)
    changelog = f"{f['worker_id']}-sequences-changelog"
    records = sum(topic_end_offsets(ctx.env.bootstrap, changelog).values())
    shutil.rmtree(f["scratch"], ignore_errors=True)
    f["scratch"].mkdir(parents=True)
    t0 = time.monotonic()
    procs, _, _ = _start_group(ctx, f["topic"], worker_id=f["worker_id"], scratch=f["scratch"])
    first_remaining: float | None = None
    try:
        port = procs[0][1]
        # sample the recovery gauge while waiting for /readyz
        from bench.live import ready
        deadline = t0 + 120
        while not ready(port):
            if not procs[0][0].alive():
                raise RuntimeError(f"worker exited during recovery:\n{procs[0][0].tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after 120 s:\n{procs[0][0].tail()}")
            try:
                if first_remaining is None and metric(scrape(port), "actionstream_recovery_remaining_records") > 0:
                    first_remaining = time.monotonic()
            except OSError:
                pass
            time.sleep(0.05)
        t_ready = time.monotonic()
        wait_ready(procs)
        lengths = sequence_lengths(port, f["user_ids"])
    finally:
        _stop(procs)
    ready_s = t_ready - t0
    sec.add("seconds from worker start to /readyz (RocksDB dir deleted)", ready_s, "s")
    if first_remaining is not None and t_ready > first_remaining:
        sec.add("changelog records replayed per second", records / (t_ready - first_remaining), "records/s",
                note="from the first scrape showing records left to replay to /readyz")
    sec.add("changelog records replayed per second, whole start-up", records / ready_s, "records/s",
            note="records / (start → ready): a lower bound including process start and group join")
    full = sum(1 for v in lengths.values() if v == 100)
    sec.notes.append(f"{records:,} changelog records for {f['users']:,} users; after recovery GET /sequence "
                     f"returns a full 100-action sequence for {full:,} of {len(lengths):,} users")
    if full != len(lengths):
        sec.notes.append("❌ the recovered state is missing actions (see above)")


# ------------------------------------------------------------------------------------------------ profile

def profile(ctx: Ctx, sec: Section) -> None:
    """py-spy samples one worker over the shared pre-filled topic: top frames of the hot path."""
    pyspy = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise Unavailable("py-spy is not installed (pip install -e .[dev])")
    from bench.live import metric, scrape, wait_ready
    w = ctx.workload
    procs, _, scratch = _start_group(ctx, ctx.topic)
    out = ctx.out_dir / "profile-worker.txt"
    try:
        wait_ready(procs)
        pid, port = procs[0][0].pid, procs[0][1]
        while metric(scrape(port), "actionstream_events_accepted_total") <= 0:
            time.sleep(0.05)
        duration = 2 if ctx.quick else 8
        res = subprocess.run([pyspy, "record", "--pid", str(pid), "--duration", str(duration), "--rate", "200",
                              "--format", "raw", "--output", str(out), "--nonblocking"],
                             capture_output=True, text=True, timeout=duration + 60)
        if res.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {res.stderr.strip()[-500:]}")
        done = metric(scrape(port), "actionstream_events_accepted_total")
    finally:
        _stop(procs)
    own, total, n = _collapse(out)
    sec.notes.append(f"py-spy, 200 Hz for {duration} s while the worker consumed the pre-filled topic "
                     f"({done:,.0f} of {w.n:,} events accepted by the end); {n:,} samples; raw stacks: {out.name}")
    for name, cnt in own[:12]:
        sec.add(f"self: {name}", cnt / n * 100, "%")
    for name, cnt in total[:12]:
        sec.add(f"inclusive: {name}", cnt / n * 100, "%")


def _collapse(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Self (leaf) and inclusive sample counts per frame from py-spy's collapsed-stack output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for fr in set(frames):
            incl[fr] = incl.get(fr, 0) + c
    def top(d: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(d.items(), key=lambda kv: -kv[1])
    # inclusive: skip the frames (almost) every sample shares: process roots, the worker's run(), the loop
    inclusive = [(k, v) for k, v in top(incl) if v < 0.8 * n]
    return top(own), inclusive, max(n, 1)


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module.py)``."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"


SECTIONS: list[tuple[str, str, Callable[[Ctx, Section], None]]] = [
    ("ceiling", "(a) Ceiling: bare Kafka clients and bare RocksDB", ceiling),
    ("naive", "(b) Naive baseline: minimal Faust agent, one table write per event", naive),
    ("framework", "(c) Framework ceiling: decode-only Faust agent", framework),
    ("platform", "(d) Platform: actionstream worker end to end, scale-out", platform),
    ("freshness", "(e) Freshness: event time → sequence stored", freshness),
    ("realtime", "(e) Realtime TransAct vectors: throughput cost, freshness → realtime vector stored", realtime),
    ("api", "(f) Feature API under load", api),
    ("scoring", "(f) TransAct scoring and the direct port", scoring),
    ("footprint", "(h) Footprint: RocksDB bytes per user, worker RSS", footprint),
    ("recovery", "(g) Recovery: changelog replay after the RocksDB dir is deleted", recovery),
    ("profile", "Profile of the worker hot path (py-spy)", profile),
]
