"""moto's S3 server with requests serialised, so conditional puts are atomic.

moto checks `If-None-Match: *` and then stores the object in two separate steps
(moto/s3/responses.py, put_object), and `moto_server` serves requests on many threads: two
concurrent put-if-absent requests for one key can both succeed. Apiary's commit protocol rests on
that single guarantee, so the tests run moto behind one lock. Usage: same flags as moto_server.
"""

import argparse
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            # Consume the whole response under the lock: the write happens while iterating.
            return list(app(environ, start_response))

    run_simple(args.host, args.port, serialised, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
