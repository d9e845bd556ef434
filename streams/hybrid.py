"""Wire the hybrid features into a worker: models, realtime vectors, the daily table (issue 5, item 5).

:func:`install_hybrid` is called once by :func:`streams.app.create_platform` (before the API is registered):

* loads the checkpoints named in settings (:mod:`streams.models`) and sets ``platform.scorer`` (score
  route) and ``platform.encoder`` (realtime vectors; also the ``model_version`` of the features route);
* with an encoder: opens the realtime store, hands the sequence agent its dirty map
  (``platform.handler.dirty``), starts the micro-batching task and exposes the store as
  ``platform.tables.realtime`` (:mod:`streams.realtime`);
* always: the ``daily`` Faust table and its agent on ``topic_embeddings`` (:mod:`streams.daily`), exposed as
  ``platform.tables.daily``;
* a 1 s timer for ``actionstream_table_keys{table="realtime"|"daily"}`` and
  ``actionstream_model_loaded{model="pinnerformer_daily"}`` (1 while this worker holds daily records).

Rolling in a new checkpoint (see also :mod:`streams.models`): nothing in the worker's state depends on the
model, so either

* a rolling restart with the new ``ACTIONSTREAM_TRANSACT_CHECKPOINT`` / ``ACTIONSTREAM_REALTIME_CHECKPOINT``
  (sequences come back from local RocksDB or the changelog; vectors are recomputed under the new version), or
* replace the files at the configured paths and send ``SIGHUP``: :func:`reload_models` loads them in a
  thread, then swaps ``platform.scorer`` / ``platform.encoder`` between two requests / encoder batches.
  Stored vectors of the old version read as missing and are recomputed on the user's next action or read.
  A failed load keeps the old models (logged); the paths themselves cannot change without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

import faust

from streams.daily import DailyHandler, DailyStore, create_daily_table
from streams.errors import ConfigError
from streams.models import MODEL_DAILY, Models, load_models, set_model_gauges
from streams.realtime import RealtimeEncoder, RealtimeStore

if TYPE_CHECKING:
    from streams.app import Platform

__all__ = ["install_hybrid", "reload_models"]

log = logging.getLogger(__name__)


def install_hybrid(platform: Platform) -> None:
    """Load models and add the realtime encoder, the daily table/agent and their gauges to ``platform``."""
    app, settings, metrics = platform.app, platform.settings, platform.metrics
    models = load_models(settings)
    set_model_gauges(metrics, models)
    platform.scorer = models.scorer
    platform.encoder = models.encoder

    daily_table = create_daily_table(app, settings)
    daily_store = DailyStore(daily_table, platform.codec, settings.partitions)
    daily_dim = int(models.scorer.cfg.daily_dim) if models.scorer is not None else 0
    daily = DailyHandler(daily_store, metrics, platform.handler.send_dlq, daily_dim)
    platform.tables.daily = daily_table
    platform.extras["daily"] = daily
    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    embeddings_topic = app.topic(settings.topic_embeddings, partitions=settings.partitions, **raw)

    @app.agent(embeddings_topic, name="daily")
    async def daily_agent(stream: faust.StreamT) -> None:
        handle = daily.handle
        async for event in stream.events():
            m = event.message
            handle(m.key, m.value, m.topic, m.partition, m.offset)

    realtime: RealtimeEncoder | None = None
    if models.encoder is not None:
        store = RealtimeStore(settings.state_dir.resolve() / "realtime-vectors", platform.sequences,
                              str(models.encoder.model_version), pending={})
        realtime = RealtimeEncoder(models.encoder, platform.sequences, store, metrics,
                                   settings.encoder_batch_max, settings.encoder_interval_ms / 1000,
                                   settings.encoder_max_busy)
        platform.tables.realtime = store
        platform.handler.dirty = store.pending
        platform.extras["realtime"] = realtime
        encoder_service = realtime

        @app.task
        async def realtime_encoder() -> None:
            await encoder_service.run()

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def _stop_encoder(app_: Any, **kwargs: Any) -> None:
            encoder_service.stop()
            log.info("realtime encoder stopped after %d vectors", encoder_service.encoded_total)

    @app.task
    async def install_sighup() -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(reload_models(platform)))
        except (NotImplementedError, RuntimeError, ValueError) as exc:  # not the main thread / no signals
            log.warning("SIGHUP model reload not available: %s", exc)

    keys = metrics.table_keys
    daily_loaded = metrics.model_loaded.labels(model=MODEL_DAILY)

    @app.timer(1.0, name="hybrid-gauges")
    async def refresh_hybrid_gauges() -> None:
        n_daily = daily_store.count_keys()
        keys.labels(table="daily").set(n_daily)
        daily_loaded.set(1 if n_daily > 0 or daily.stored > 0 else 0)
        if realtime is not None:
            keys.labels(table="realtime").set(realtime.store.count_keys())

    log.info("hybrid features: ranking model %s, realtime encoder %s, daily table from %r",
             models.scorer.model_version if models.scorer is not None else "none (score answers 503)",
             models.encoder.model_version if models.encoder is not None else "none (realtime: [])",
             settings.topic_embeddings)


async def reload_models(platform: Platform) -> bool:
    """Load the checkpoints at the configured paths again and serve them (SIGHUP). False if loading failed."""
    loop = asyncio.get_running_loop()
    old = Models(scorer=platform.scorer, encoder=platform.encoder)
    log.info("reloading models from %s / %s", platform.settings.transact_checkpoint,
             platform.settings.realtime_checkpoint)
    try:
        models = await loop.run_in_executor(None, load_models, platform.settings)
    except ConfigError as exc:
        log.error("model reload failed, still serving ranking %s / realtime %s: %s",
                  getattr(old.scorer, "model_version", None), getattr(old.encoder, "model_version", None), exc)
        return False
    platform.scorer = models.scorer
    platform.encoder = models.encoder
    daily: DailyHandler | None = platform.extras.get("daily")
    if daily is not None:
        daily.daily_dim = int(models.scorer.cfg.daily_dim) if models.scorer is not None else 0
    realtime: RealtimeEncoder | None = platform.extras.get("realtime")
    if realtime is not None and models.encoder is not None:
        realtime.swap(models.encoder)
    set_model_gauges(platform.metrics, models, previous=old)
    log.info("models reloaded: ranking %s, realtime %s", getattr(models.scorer, "model_version", None),
             getattr(models.encoder, "model_version", None))
    return True
