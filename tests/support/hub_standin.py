"""A stand-in for the model hub's HTTP API on 127.0.0.1, serving folders as repos.

Just what huggingface_hub uses to find and fetch files (``HF_ENDPOINT`` points it here):

- ``GET /api/models/{repo}/revision/{rev}`` (``?blobs=True``): the repo's commit and files,
  with sizes, git blob ids and, for ``.safetensors`` (LFS on the real hub), sha256;
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (``X-Linked-Etag``
  and ``X-Linked-Size`` for LFS files), ``Content-Length``, ``Accept-Ranges``; GET honours
  ``Range: bytes=N-`` with ``206`` and ``Content-Range``.

Faults for tests: ``drop_after[path] = N`` ends the first GET of a file after N bytes (the
connection closes mid-body); ``stall_after[path] = N`` sends N bytes and then nothing until
``release`` is set. ``requests`` records ``(method, path, Range header)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ADAPTER_REPO = "guoyww/animatediff-motion-adapter-v1-5-2"
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {name: Path(folder) for name, folder in repos.items()}
        self.commits = {name: hashlib.sha1(name.encode()).hexdigest() for name in repos}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- what it serves ------------------------------------------------------------------

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def sibling(self, name: str, path: Path) -> dict:
        data = path.read_bytes()
        entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "Hub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, body=False)

            def do_GET(self):
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- requests ------------------------------------------------------------------------

    def _send(self, handler, status: int, headers: dict, body: bytes = b"", write: bool = True) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, str(value))
        handler.end_headers()
        if write and body:
            handler.wfile.write(body)

    def _not_found(self, handler, code: str, body: bool) -> None:
        payload = json.dumps({"error": code}).encode()
        self._send(handler, 404, {"Content-Type": "application/json", "Content-Length": len(payload),
                                  "X-Error-Code": code}, payload, body)

    def _handle(self, handler, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        info = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
        if info:
            repo = info.group(1)
            if repo not in self.repos:
                return self._not_found(handler, "RepoNotFound", body)
            payload = json.dumps({"id": repo, "modelId": repo, "sha": self.commits[repo], "private": False,
                                  "siblings": [self.sibling(n, p) for n, p in self.files(repo).items()]}).encode()
            return self._send(handler, 200, {"Content-Type": "application/json", "Content-Length": len(payload)},
                              payload, body)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not resolve or resolve.group(1) not in self.repos:
            return self._not_found(handler, "RepoNotFound", body)
        repo, revision, name = resolve.groups()
        if revision not in ("main", self.commits[repo]):
            return self._not_found(handler, "RevisionNotFound", body)
        file = self.files(repo).get(name)
        if file is None:
            return self._not_found(handler, "EntryNotFound", body)
        data = file.read_bytes()
        entry = self.sibling(name, file)
        headers = {"X-Repo-Commit": self.commits[repo], "ETag": f'"{entry["blobId"]}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["sha256"]}"', "X-Linked-Size": len(data),
                            "ETag": f'"{entry["lfs"]["sha256"]}"'})
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if wanted and body:
            start, status = int(wanted.group(1)), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        chunk = data[start:]
        headers["Content-Length"] = len(chunk)
        key = f"{repo}/{name}"
        if not body:
            return self._send(handler, status, headers, write=False)
        drop, stall = self.drop_after.pop(key, None), self.stall_after.pop(key, None)
        if drop is None and stall is None:
            return self._send(handler, status, headers, chunk)
        self._send(handler, status, headers, chunk[:drop if drop is not None else stall])
        handler.wfile.flush()
        if stall is not None:
            self.release.wait(60)
        handler.close_connection = True  # the rest never comes


def tiny_repos(dest: Path) -> dict[str, Path]:
    """The tiny model saved with save_pretrained in the two repos' layouts (SD 1.5 and the
    motion adapter), as ``python -m flash_engine weights fetch`` expects them."""
    from flash_engine.models.loading import save_folder
    from flash_engine.models.tiny import tiny_parts

    sd15, adapter = dest / "sd15", dest / "adapter"
    save_folder(tiny_parts(), sd15)
    (sd15 / "motion_adapter").rename(adapter)
    (sd15 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}) + "\n")
    (sd15 / "README.md").write_text("not fetched: only the listed patterns are\n")
    return {SD15_REPO: sd15, ADAPTER_REPO: adapter}


OPENPOSE_REPO = "lllyasviel/control_v11p_sd15_openpose"
DEPTH_REPO = "lllyasviel/control_v11f1p_sd15_depth"


def controlnet_repos(dest: Path) -> dict[str, Path]:
    """Tiny ControlNets saved with save_pretrained in the two public ControlNet repos' places,
    beside what the real repos also hold and the engine must not fetch (pickles, a README)."""
    from tests.support.controls import save_tiny_controlnet

    repos = {}
    for seed, repo in enumerate((OPENPOSE_REPO, DEPTH_REPO), start=1):
        folder = save_tiny_controlnet(dest / repo.split("/")[1], seed=seed)
        (folder / "diffusion_pytorch_model.bin").write_bytes(b"a pickle: never fetched")
        (folder / "README.md").write_text("not fetched\n")
        repos[repo] = folder
    return repos
