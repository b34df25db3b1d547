"""Servers on 127.0.0.1 for tests: static files (shards, checkpoints over HTTP) and a loopback Hugging Face Hub.

:class:`LoopbackServer` holds the scaffolding both share (a threaded server on a free port, started on
``with`` entry, shut down on exit); :class:`FileServer` and :class:`LoopbackHub` only say how they answer.
"""
import base64
import functools
import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class LoopbackServer:
    """A ``ThreadingHTTPServer`` with ``handler`` on 127.0.0.1 (any free port), serving while in ``with``."""

    def __init__(self, handler):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class FileServer(LoopbackServer):
    """Static files of ``root``; ``requests`` counts GETs per path."""

    def __init__(self, root: Path):
        self.requests: Counter = Counter()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests[self.path] += 1
                super().do_GET()

            def log_message(self, *args):  # keep the test output quiet
                pass

        super().__init__(functools.partial(Handler, directory=str(root)))


# ----------------------------------------------------------------------------- a loopback Hugging Face Hub

def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LoopbackHub(LoopbackServer):
    """An in-memory git-like Hub answering the routes huggingface_hub calls: repo creation, README
    metadata validation, preupload and NDJSON commits (upload_folder), the revision and tree routes and
    HEAD/GET ``resolve`` (snapshot_download, hf_hub_download).

    Repos as ``{repo_id: {'refs': {'main': sha}, 'commits': {sha: {path: bytes}}}}`` behind Hub routes."""

    def __init__(self):
        self.repos = {}
        self.authorizations = []  # the Authorization header of every write request
        self.requests = []  # (method, path) of every request
        hub_server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_HEAD(self):  # noqa: N802 (http.server's names)
                hub_server.requests.append(("HEAD", self.path))
                hub_server.resolve(self, body=False)

            def do_GET(self):  # noqa: N802
                hub_server.requests.append(("GET", self.path))
                path = urlsplit(self.path).path
                if path.startswith("/api/models/"):
                    hub_server.api_get(self, path[len("/api/models/"):])
                else:
                    hub_server.resolve(self, body=True)

            def do_POST(self):  # noqa: N802
                hub_server.requests.append(("POST", self.path))
                hub_server.authorizations.append(self.headers.get("Authorization"))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub_server.post(self, urlsplit(self.path).path, body)

        super().__init__(Handler)

    # ------------------------------------------------------------------ answers
    @staticmethod
    def reply(handler, status, payload=None, headers=None, body=True):
        data = b"" if payload is None else (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        if not isinstance(payload, bytes):
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    def not_found(self, handler, code, body=True):
        self.reply(handler, 404, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code}, body=body)

    def commit_of(self, repo_id, revision):
        """(sha, files) of ``revision`` (a branch or a commit sha), or None."""
        repo = self.repos[repo_id]
        sha = repo["refs"].get(revision, revision)
        return (sha, repo["commits"][sha]) if sha in repo["commits"] else None

    def add_commit(self, repo_id, files):
        repo = self.repos[repo_id]
        parent = repo["refs"].get("main", "")
        sha = hashlib.sha1((parent + json.dumps(sorted((p, _git_blob_id(c)) for p, c in files.items()))).encode()).hexdigest()
        repo["commits"][sha] = files
        repo["refs"]["main"] = sha
        return sha

    def api_get(self, handler, rest):
        parts = [unquote(p) for p in rest.split("/")]
        repo_id = "/".join(parts[:2])
        if repo_id not in self.repos:
            return self.not_found(handler, "RepoNotFound")
        route, revision = (parts[2], parts[3]) if len(parts) > 3 else ("revision", "main")
        found = self.commit_of(repo_id, revision)
        if found is None:
            return self.not_found(handler, "RevisionNotFound")
        sha, files = found
        if route == "revision":
            return self.reply(handler, 200, {"id": repo_id, "sha": sha, "private": self.repos[repo_id]["private"],
                                             "siblings": [{"rfilename": p} for p in sorted(files)]})
        if route == "tree":
            folders = sorted({str(Path(p).parent) for p in files} - {"."})
            entries = [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders]
            entries += [{"type": "file", "path": p, "size": len(c), "oid": _git_blob_id(c)} for p, c in sorted(files.items())]
            return self.reply(handler, 200, entries)
        return self.not_found(handler, "EntryNotFound")

    def resolve(self, handler, body):
        parts = [unquote(p) for p in urlsplit(handler.path).path.strip("/").split("/")]
        if len(parts) < 5 or parts[2] != "resolve":
            return self.not_found(handler, "EntryNotFound", body)
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo_id not in self.repos:
            return self.not_found(handler, "RepoNotFound", body)
        found = self.commit_of(repo_id, revision)
        if found is None:
            return self.not_found(handler, "RevisionNotFound", body)
        sha, files = found
        if filename not in files:
            return self.not_found(handler, "EntryNotFound", body)
        content = files[filename]
        self.reply(handler, 200, content, {"X-Repo-Commit": sha, "ETag": f'"{_git_blob_id(content)}"',
                                           "Content-Type": "application/octet-stream"}, body=body)

    def post(self, handler, path, body):
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                return self.reply(handler, 409, {"error": "You already created this model repo",
                                                 "url": f"{self.url}/{repo_id}"})
            self.repos[repo_id] = {"refs": {}, "commits": {}, "private": payload.get("visibility") == "private"}
            self.add_commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            return self.reply(handler, 200, {"url": f"{self.url}/{repo_id}"})
        if path == "/api/validate-yaml":
            return self.reply(handler, 200, {"errors": [], "warnings": []})
        parts = [unquote(p) for p in path[len("/api/models/"):].split("/")] if path.startswith("/api/models/") else []
        if len(parts) != 4 or parts[2] not in ("preupload", "commit"):
            return self.not_found(handler, "EntryNotFound")
        repo_id = "/".join(parts[:2])
        if repo_id not in self.repos:
            return self.not_found(handler, "RepoNotFound")
        if parts[2] == "preupload":  # every file inline ("regular"): no LFS/Xet transfer to serve
            files = json.loads(body)["files"]
            return self.reply(handler, 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                       for f in files]})
        _, files = self.commit_of(repo_id, parts[3])
        files = dict(files)
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":
                return self.reply(handler, 400, {"error": f"loopback hub: unsupported commit item {item['key']}"})
        sha = self.add_commit(repo_id, files)
        return self.reply(handler, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                         "pullRequestUrl": None})


def point_hub_client_at(server: LoopbackHub, tmp_path: Path, monkeypatch) -> None:
    """Make huggingface_hub (and so OpenCLIP) talk to ``server`` with a fresh cache and no saved login.

    huggingface_hub was imported (with OpenCLIP) before the tests, so its ``constants`` are patched."""
    from huggingface_hub import constants as hub_constants
    monkeypatch.setattr(hub_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no saved login is read
