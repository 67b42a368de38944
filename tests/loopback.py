"""Loopback HTTP servers for the download tests: nothing in the tests touches the network.

`Loopback` serves files from memory on 127.0.0.1 with HTTP Range / If-Range support, can
answer chosen paths with an error status, and has a switch that drops the connection
halfway through a body (to test resume). `FakeHub` adds the part of the Hugging Face Hub
HTTP API that `huggingface_hub.snapshot_download` uses (repo info, recursive tree, resolve
with HEAD and GET), including gated repositories that answer 401 without a token, so the
real client can be pointed at it with HF_ENDPOINT.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HubRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated_token: str | None = None  # when set, requests without "Bearer <token>" get 401 GatedRepo


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    def _handle(self, head: bool) -> None:
        owner: Loopback = self.server.owner
        parsed = urllib.parse.urlsplit(self.path)
        owner.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if parsed.path in owner.status:
            return self._send_error(owner.status[parsed.path], head)
        if owner.hub is not None and owner.hub.handle(self, parsed, head):
            return
        key = parsed.path if parsed.path in owner.files else self.path
        if key not in owner.files:
            return self._send_error(404, head)
        self.send_body(owner.files[key], head, drop=owner.take_drop(key))

    def _send_error(self, code: int, head: bool, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": f"status {code}"}).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_json(self, obj, head: bool = False) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_body(self, data: bytes, head: bool, drop: bool = False, extra: dict[str, str] | None = None) -> None:
        """Serve bytes honouring `Range: bytes=a-[b]` (and If-Range against the ETag)."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        start, end = 0, len(data) - 1
        status = 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and self.server.owner.ranges and (if_range is None or if_range == etag):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = min(end, len(data) - 1)
                status = 206
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        if self.server.owner.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        if drop:  # announce the whole body, send half, hang up: a connection dropped halfway
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: "Loopback"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up early (gdown on a 403, a dropped range) are expected; the
        default prints a traceback to sys.stderr, which CliRunner captures into the output
        under test."""


@dataclass
class Loopback:
    """An HTTP server on 127.0.0.1 serving `files` (path -> bytes); use as a context manager."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path -> forced error status
    ranges: bool = True  # honour Range requests
    drops: dict[str, int] = field(default_factory=dict)  # path -> how many responses to cut halfway
    hub: "FakeHub | None" = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def take_drop(self, path: str) -> bool:
        with self._lock:
            if self.drops.get(path, 0) > 0:
                self.drops[path] -= 1
                return True
        return False

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> "Loopback":
        self._server = _Server(self)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


@dataclass
class FakeHub:
    """The Hub API subset used by snapshot_download, for dataset repositories."""

    repos: dict[str, HubRepo] = field(default_factory=dict)

    _API = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)/(?P<what>revision|tree)/(?P<rev>[^/]+)(?P<rest>/.*)?$")
    _RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")

    def handle(self, h: _Handler, parsed: urllib.parse.SplitResult, head: bool) -> bool:
        path = urllib.parse.unquote(parsed.path)
        m = self._API.match(path) or self._RESOLVE.match(path)
        if not m:
            return False
        repo = self.repos.get(m.group("repo"))
        if repo is None:
            h._send_error(404, head, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return True
        if repo.gated_token and h.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            h._send_error(401, head, {"X-Error-Code": "GatedRepo",
                                      "X-Error-Message": "Access to this dataset is restricted"})
            return True
        if urllib.parse.unquote(m.group("rev")) not in ("main", repo.commit):
            h._send_error(404, head, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
            return True
        if "file" in m.groupdict():
            name = m.group("file")
            if name not in repo.files:
                h._send_error(404, head, {"X-Error-Code": "EntryNotFound"})
                return True
            data = repo.files[name]
            etag = '"' + hashlib.sha1(data).hexdigest() + '"'
            h.send_body(data, head, extra={"X-Repo-Commit": repo.commit, "X-Linked-Etag": etag})
            return True
        if m.group("what") == "revision":
            h.send_json({"id": m.group("repo"), "sha": repo.commit, "private": False,
                         "gated": bool(repo.gated_token), "disabled": False,
                         "siblings": [{"rfilename": f} for f in sorted(repo.files)]}, head)
            return True
        entries, dirs = [], set()
        for name, data in sorted(repo.files.items()):
            parts = name.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entries.append({"type": "file", "path": name, "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest()})
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                    for d in sorted(dirs)]
        h.send_json(entries, head)
        return True
