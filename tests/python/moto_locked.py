"""moto's S3 server with requests serialised, so conditional puts are atomic.

moto checks `If-None-Match: *` and then stores the object in two separate steps
(moto/s3/responses.py, put_object), and `moto_server` serves requests on many threads: two
concurrent put-if-absent requests for one key can both succeed. Apiary's commit protocol rests on
that single guarantee, so the tests run moto behind one lock. Usage: same flags as moto_server.

With `-p 0` (the default) the kernel picks a free port while the socket is bound, so no other
process can take it in between; the first line on stdout is `moto_locked listening on port N`,
which the harnesses read.
"""

import argparse
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=0)
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            # Consume the whole response under the lock: the write happens while iterating.
            return list(app(environ, start_response))

    server = make_server(args.host, args.port, serialised, threaded=True, request_handler=MotoRequestHandler)
    print(f"moto_locked listening on port {server.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
