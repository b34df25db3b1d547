"""A static file server on 127.0.0.1 for tests that stream shards or download checkpoints over HTTP."""
import functools
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    """Static files of ``root`` on 127.0.0.1 (any free port); ``requests`` counts GETs per path."""

    def __init__(self, root: Path):
        self.requests: Counter = Counter()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests[self.path] += 1
                super().do_GET()

            def log_message(self, *args):  # keep the test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
