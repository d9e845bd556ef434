"""`python -m bench.bare_http PORT`: the floor of HTTP latency on this machine, for the feature-API section.

A bare aiohttp server answering ``GET /v1/users/{user_id}/features`` with a small constant JSON body: no
Faust, no state, no middleware. The benchmark loads it with the same client, at the same request rate,
while the same stream runs, so the report can show how much of the client-side latency is the machine
(loopback, process wake-ups on 2 shared cores) rather than the worker.
"""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b'{"user_id":"u","sequence_length":0,"realtime":null,"daily":null}'


async def features(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/v1/users/{user_id}/features", features)
    app.router.add_get("/readyz", features)  # bench.live.wait_ready polls it
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
