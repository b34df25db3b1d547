"""push_adapters and pretrained='hf-hub:ORG/NAME' against a loopback Hub (no network, nothing of ours mocked).

``LoopbackHub`` is a small in-memory git-like Hub on 127.0.0.1 that answers the routes huggingface_hub
calls: repo creation, README metadata validation, preupload and NDJSON commits (upload_folder), the
revision and tree routes and HEAD/GET ``resolve`` (snapshot_download, hf_hub_download). huggingface_hub
is pointed at it through its ``constants`` (it was imported, with OpenCLIP, before this module).
"""
import base64
import hashlib
import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import open_clip
import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file

import open_clip_thermal as oct
from open_clip_thermal import hub
from open_clip_thermal.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterError

from model_helpers import TINY, images, randomise_lora, tiny_clip, tokens

TOKEN = "hf_loopback_write_token"


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LoopbackHub:
    """Repos as ``{repo_id: {'refs': {'main': sha}, 'commits': {sha: {path: bytes}}}}`` behind Hub routes."""

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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LoopbackHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

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


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """A running LoopbackHub that huggingface_hub (and so OpenCLIP) talks to, with a fresh cache."""
    with LoopbackHub() as server:
        monkeypatch.setattr(hub_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no saved login is read
        yield server


@pytest.fixture
def trained_dual(tmp_path):
    """A tclip-tiny-dual on a base checkpoint file, LoRA B perturbed (so the adapters matter), λ 0.6."""
    base_ckpt = str(tmp_path / "base.pt")
    torch.save(tiny_clip().state_dict(), base_ckpt)
    model = open_clip.create_model("tclip-tiny-dual", pretrained=base_ckpt, lam=0.6)
    randomise_lora(model)
    return model.eval()


def _outputs(model):
    with torch.no_grad():
        return model.encode_image(images()), model.encode_text(tokens())


RESULTS = {"config": {"ks": [1, 5]}, "rows": [
    {"label": "T-CLIP Dual", "recall": {"image_to_text": {"1": {"mean": 0.4321}, "5": {"mean": 0.9}},
                                        "text_to_image": {"1": {"mean": 0.25}, "5": {"mean": 0.75}}}}]}


def test_push_then_load_from_the_hub_gives_the_same_model(loopback_hub, trained_dual, tmp_path):
    commit = oct.push_adapters(trained_dual, "thermal-org/tiny-dual", token=TOKEN,
                               data="synthetic thermal pairs (test)", recall_table=RESULTS)
    files = loopback_hub.repos["thermal-org/tiny-dual"]["commits"][commit.oid]
    assert set(files) == {".gitattributes", "README.md", CONFIG_NAME,
                          f"global/{WEIGHTS_NAME}", f"fine_grained/{WEIGHTS_NAME}"}
    assert set(loopback_hub.authorizations) == {f"Bearer {TOKEN}"}  # every write carried the token
    assert commit.repo_url.repo_id == "thermal-org/tiny-dual"

    card = files["README.md"].decode()
    assert "`thermal-vit-tiny`" in card and "base.pt" in card  # base model and its weights
    assert "λ = 0.6" in card and "synthetic thermal pairs (test)" in card
    assert "| T-CLIP Dual | 43.21 | 90.00 | 25.00 | 75.00 |" in card  # recall in %
    assert "pretrained='hf-hub:thermal-org/tiny-dual'" in card
    assert json.loads(files[CONFIG_NAME])["lam"] == 0.6

    loaded = open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/tiny-dual").eval()
    assert loaded.lam == 0.6
    for got, want in zip(_outputs(loaded), _outputs(trained_dual)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    with_transforms, _, preprocess = open_clip.create_model_and_transforms("tclip-tiny-dual",
                                                                           pretrained="hf-hub:thermal-org/tiny-dual")
    torch.testing.assert_close(_outputs(with_transforms.eval())[1], _outputs(trained_dual)[1], atol=0, rtol=0)
    plain = open_clip.create_model("tclip-tiny-dual", pretrained=trained_dual.provenance.base_pretrained).eval()
    assert (_outputs(plain)[0] - _outputs(trained_dual)[0]).abs().max() > 1e-3  # the adapters did load


def test_revision_pins_a_commit_and_the_cache_serves_offline(loopback_hub, trained_dual, monkeypatch):
    first = oct.push_adapters(trained_dual, "thermal-org/tiny-dual", token=TOKEN)
    reference = _outputs(trained_dual)
    randomise_lora(trained_dual, seed=11)
    second = oct.push_adapters(trained_dual, "thermal-org/tiny-dual", token=TOKEN, commit_message="retrained")
    assert first.oid != second.oid

    pinned = open_clip.create_model("tclip-tiny-dual", pretrained=f"hf-hub:thermal-org/tiny-dual@{first.oid}").eval()
    latest = open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/tiny-dual").eval()
    torch.testing.assert_close(_outputs(pinned)[0], reference[0], atol=0, rtol=0)
    torch.testing.assert_close(_outputs(latest)[0], _outputs(trained_dual)[0], atol=0, rtol=0)

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the cache, no request
    seen = len(loopback_hub.requests)
    offline = open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/tiny-dual").eval()
    assert len(loopback_hub.requests) == seen
    torch.testing.assert_close(_outputs(offline)[0], _outputs(trained_dual)[0], atol=0, rtol=0)


def test_pushing_a_saved_folder_uploads_only_the_adapter_files(loopback_hub, trained_dual, tmp_path):
    folder = oct.save_adapters(trained_dual, tmp_path / "adapters", branches=["global"])
    (folder / "train.log").write_text("not for the Hub")
    commit = oct.push_adapters(str(folder), "thermal-org/tiny-global", token=TOKEN, private=True,
                               recall_table="| row | R@1 |\n|---|---|\n| mine | 12.5 |")
    files = loopback_hub.repos["thermal-org/tiny-global"]["commits"][commit.oid]
    assert set(files) == {".gitattributes", "README.md", CONFIG_NAME, f"global/{WEIGHTS_NAME}"}
    assert files[f"global/{WEIGHTS_NAME}"] == (folder / "global" / WEIGHTS_NAME).read_bytes()
    assert loopback_hub.repos["thermal-org/tiny-global"]["private"]
    assert "| mine | 12.5 |" in files["README.md"].decode()
    with pytest.raises(AdapterError, match="not an adapter folder"):
        oct.push_adapters(str(tmp_path), "thermal-org/nothing", token=TOKEN)


def test_a_repo_without_adapter_config_is_openclips_business(loopback_hub, tmp_path):
    stock = tiny_clip(seed=5).eval()
    loopback_hub.repos["thermal-org/stock-tiny"] = {"refs": {}, "commits": {}, "private": False}
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(weights))
    config = {"model_cfg": open_clip.get_model_config(TINY), "preprocess_cfg": {}}
    loopback_hub.add_commit("thermal-org/stock-tiny", {"open_clip_config.json": json.dumps(config).encode(),
                                                       "open_clip_model.safetensors": weights.read_bytes()})
    with pytest.raises(AdapterError, match="no adapter_config.json.*open_clip.create_model\\('hf-hub:thermal-org/stock-tiny'\\)"):
        open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/stock-tiny")
    assert not any("open_clip_model" in path for _, path in loopback_hub.requests)  # adapter files only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_hub = open_clip.create_model("hf-hub:thermal-org/stock-tiny").eval()  # OpenCLIP's own hf-hub loader
    with torch.no_grad():
        torch.testing.assert_close(from_hub.encode_image(images()), stock.encode_image(images()), atol=0, rtol=0)
    with pytest.raises(RepositoryNotFoundError):
        open_clip.create_model("tclip-tiny-dual", pretrained="hf-hub:thermal-org/missing")


def test_hub_names_are_parsed_and_other_values_pass_through():
    assert hub.parse_hub_name("hf-hub:org/name") == ("org/name", None)
    assert hub.parse_hub_name("hf-hub:org/name@v1.0") == ("org/name", "v1.0")
    for other in (None, "openai", "/tmp/adapters", Path("hf-hub:org/name")):
        assert hub.parse_hub_name(other) is None
        assert hub.resolve_pretrained(other) is other
    with pytest.raises(ValueError, match="ORG/NAME"):
        hub.parse_hub_name("hf-hub:name-without-org")
