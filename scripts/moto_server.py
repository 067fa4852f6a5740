"""moto's server, one request at a time: the AWS emulator for medlabel's tests.

`moto_server` serves every request on its own thread, and moto's DynamoDB
TransactWriteItems checks and applies its items one by one in plain Python, so two
concurrent transactions can interleave and both pass a condition only one should.
medlabel's event store relies on exactly those conditions (a gapless global head),
so this launcher wraps moto's WSGI app in one lock: connections stay concurrent and
keep-alive, requests are handled strictly one after another, like one DynamoDB item.

`GET /_medlabel/busy` answers `{"busy_s": ...}`, the seconds spent handling requests
so far: a benchmark reads it around a run to split the run's time between the emulator
and the process it measures.

Usage: python moto_server.py [-H 127.0.0.1] [-p 5000]
"""

import argparse
import json
import threading
import time

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def serialized(app):
    lock = threading.Lock()
    busy = [0.0]

    def handle(environ, start_response):
        if environ.get("PATH_INFO") == "/_medlabel/busy":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"busy_s": busy[0]}).encode()]
        with lock:
            started = time.perf_counter()
            # Materialize the body under the lock: responses may be generators that
            # still read moto's state while they are iterated.
            body = list(app(environ, start_response))
            busy[0] += time.perf_counter() - started
            return body

    return handle


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        serialized(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
