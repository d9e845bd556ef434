"""Naive baseline: decode each event and append it to the user's list in a RocksDB table (capped at 100).

One table write per event, the whole list as the value (Faust's JSON serializer), so each event also
sends a changelog record carrying the whole list: measurements.md found ~1.85k events/s on this CPU
(10k users) and ~1.4k/s with 1k users at the cap. This is what the platform has to beat.
"""

from __future__ import annotations

import orjson

from bench.faust_apps.common import Progress, make_app, parse_args, run_worker


def main() -> None:
    args = parse_args(__doc__ or "")
    app = make_app(args)
    topic = app.topic(args.topic, value_serializer="raw", key_serializer="raw", partitions=args.partitions)
    table = app.Table("naive_sequences", default=list, partitions=args.partitions,
                      key_type=str)
    progress = Progress(args.n, args.out)
    loads = orjson.loads

    @app.agent(topic)
    async def append(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            ev = loads(event.value)
            user = ev["user_id"]
            lst = list(table[user])
            lst.append(ev)
            table[user] = lst[-100:]
            progress.tick()

    run_worker(app)


if __name__ == "__main__":
    main()
