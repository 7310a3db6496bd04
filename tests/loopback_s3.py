"""moto's S3 server on 127.0.0.1 with the environment botocore and s3fs read: the object store that
tests/test_s3.py and bench/s3_vs_local.py run Winnow against.

S3 decides a conditional write (If-Match, If-None-Match) atomically; moto checks the condition and then
stores, in two steps, on whichever server thread has the request. So that two simultaneous conditional
writes cannot both pass, as on S3, the server here handles conditional writes one at a time (Winnow writes
a key that others race for, the run lock, only conditionally); every other request goes as it comes."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class _OneConditionalWriteAtATime:
    """WSGI middleware: conditional writes go through the app one at a time, the rest as they come."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if not conditional or environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))  # the whole answer, decided under the lock


def _server(port: int) -> Any:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:  # as moto's, with the app wrapped
            app = _OneConditionalWriteAtATime(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return Server(ip_address="127.0.0.1", port=port, verbose=False)


@contextmanager
def loopback_s3(key: str = "testing") -> Iterator[dict[str, str]]:
    """Start the server on a free port, point this process's environment at it, and yield that
    environment (for subprocesses and Ray workers); everything is restored on exit."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = _server(port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": key, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    import pipeline.storage  # noqa: F401 - Winnow's s3fs settings, as every Winnow process has them

    try:
        yield env
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
