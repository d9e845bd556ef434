"""Framework ceiling: a Faust agent that only decodes each event (orjson), no state.

``--take N`` batches with ``stream.take(N, within=0.05)``; measurements.md found ~5.4–5.7k events/s
per event and ~6.3k/s with take on this CPU: Faust's per-event loop machinery bounds any agent.
"""

from __future__ import annotations

import orjson

from bench.faust_apps.common import Progress, make_app, parse_args, run_worker


def main() -> None:
    args = parse_args(__doc__ or "")
    app = make_app(args)
    topic = app.topic(args.topic, value_serializer="raw", key_serializer="raw", partitions=args.partitions)
    progress = Progress(args.n, args.out)
    loads = orjson.loads

    if args.take:
        @app.agent(topic)
        async def decode_batches(stream):  # type: ignore[no-untyped-def]
            async for values in stream.take(args.take, within=0.05):
                for v in values:
                    loads(v)
                progress.tick(len(values))
    else:
        @app.agent(topic)
        async def decode(stream):  # type: ignore[no-untyped-def]
            async for value in stream:
                loads(value)
                progress.tick()

    run_worker(app)


if __name__ == "__main__":
    main()
