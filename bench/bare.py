"""The floor of this stack: a bare bottle app on waitress answering a constant JSON body.

python bench/bare.py --port 8081 --threads 8
"""

from __future__ import annotations

import argparse

import bottle
import waitress

BODY = b'{"action":{"name":"continue"}}'


def make_app() -> bottle.Bottle:
    app = bottle.Bottle()

    @app.post("/sinch/callback")
    def callback() -> bytes:
        bottle.request.body.read()
        bottle.response.content_type = "application/json"
        return BODY

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    server = waitress.create_server(
        make_app(), host=args.host, port=args.port, threads=args.threads
    )
    print(
        f"bare listening on http://{args.host}:{server.effective_port}/sinch/callback", flush=True
    )
    server.run()


if __name__ == "__main__":
    main()
