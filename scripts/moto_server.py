"""moto's server, one request at a time: the AWS emulator for medlabel's tests.

`moto_server` serves every request on its own thread, and moto's DynamoDB
TransactWriteItems checks and applies its items one by one in plain Python, so two
concurrent transactions can interleave and both pass a condition only one should.
medlabel's event store relies on exactly those conditions (a gapless global head),
so this launcher wraps moto's WSGI app in one lock: connections stay concurrent and
keep-alive, requests are handled strictly one after another, like one DynamoDB item.

Usage: python moto_server.py [-H 127.0.0.1] [-p 5000]
"""

import argparse
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def serialized(app):
    lock = threading.Lock()

    def handle(environ, start_response):
        with lock:
            # Materialize the body under the lock: responses may be generators that
            # still read moto's state while they are iterated.
            return list(app(environ, start_response))

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
