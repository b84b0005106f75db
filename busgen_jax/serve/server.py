"""The HTTP side of `busgen serve`: one static page and a small JSON API, same-origin only.

    GET  /                          the page (index.html, app.js, style.css from the package)
    GET  /api/info                  classes, devices, samplers, defaults and limits
    POST /api/box                   {"class", "seed"} -> {"box": [x1, y1, x2, y2] or null}
    POST /api/generate              a request (studio.FIELDS) -> 202 and the job's status
    GET  /api/jobs/ID               state, queue position, progress, images done
    POST /api/jobs/ID/cancel        cancels a queued or running job
    GET  /api/jobs/ID/K.png|K.json  image K with provenance in its text chunks, and its sidecar

No path from a client is ever opened: the static files are read once at start by fixed name, and
images live in memory under server-made ids. Requests from another origin (Origin, Sec-Fetch-Site)
or for another host name (DNS rebinding) are refused, and no CORS header is ever sent.
"""

from __future__ import annotations

import http.server
import importlib.resources
import ipaddress
import json
import os
import pathlib
import re
import socket
from typing import Any

from absl import logging

from busgen_jax.serve import jobs, studio

MAX_BODY_BYTES = 16 * 1024
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_JOB = re.compile(r"^/api/jobs/([0-9a-f]{8}-[0-9]+)(?:/cancel|/([0-9]+)\.(png|json))?$")
# The page loads nothing from elsewhere; the browser enforces it too.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(host: str) -> str | None:
    """The warning printed when serving beyond this machine, or None for a loopback address."""
    if is_loopback(host):
        return None
    return (
        f"serving on {host}, not 127.0.0.1: anyone who can reach this machine can use the "
        "generator through this page, which has no authentication"
    )


class App:
    """The studio, its job queue and the page, behind the routes above."""

    def __init__(self, studio_: studio.Studio, *, max_queued: int, keep: int, save_dir=None):
        self.studio = studio_
        self.save_dir = pathlib.Path(save_dir) if save_dir else None
        self.queue = jobs.JobQueue(
            self._process, max_queued=max_queued, keep=keep, warm_up=studio_.warm_up
        )
        files = importlib.resources.files("busgen_jax.serve") / "static"
        self.static = {
            route: ((files / name).read_bytes(), kind) for route, (name, kind) in STATIC.items()
        }
        self.allowed_hosts: set[str] | None = None  # set by `make_server` once the port is known

    def close(self, timeout: float = 60.0) -> None:
        self.queue.close(timeout)

    def _process(self, job: jobs.Job) -> None:
        request = job.request
        for index in range(request.num_images):
            if job.cancelled.is_set():
                return
            image = self.studio.image(request, index, job.tick)
            provenance = self.studio.image_provenance(request, index)
            png = studio.encode_png(image, provenance)
            if self.save_dir is not None:
                sidecar = json.dumps(provenance).encode()
                for suffix, data in ((".json", sidecar), (".png", png)):
                    _write_atomically(self.save_dir / f"{job.id}-{index}{suffix}", data)
            job.images.append((png, provenance))

    def job_status(self, job: jobs.Job) -> dict[str, Any]:
        status = self.queue.status(job)
        request = job.request
        status["num_images"] = request.num_images
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"busgen-{request.pathology}-{request.device}")
        status["results"] = [
            {
                "index": k,
                "png": f"/api/jobs/{job.id}/{k}.png",
                "json": f"/api/jobs/{job.id}/{k}.json",
                "filename": f"{name}-seed{request.seed}-{k}",
                "box": None if request.box is None else list(request.box),
            }
            for k in range(status["images"])
        ]
        return status

    def get(self, path: str) -> tuple[int, bytes, str]:
        if path in self.static:
            body, kind = self.static[path]
            return 200, body, kind
        if path == "/api/info":
            return _json(200, {**self.studio.info(), "ready": self.queue.ready})
        match = _JOB.match(path)
        if not match or path.endswith("/cancel"):
            raise studio.BadRequest(f"no such page or resource: {path}", status=404)
        job = self._job(match.group(1))
        if match.group(2) is None:
            return _json(200, self.job_status(job))
        index = int(match.group(2))
        if index >= len(job.images):
            raise studio.BadRequest(f"job {job.id} has no image {index} (yet)", status=404)
        png, provenance = job.images[index]
        if match.group(3) == "png":
            return 200, png, "image/png"
        return _json(200, provenance)

    def post(self, path: str, payload: Any) -> tuple[int, bytes, str]:
        if path == "/api/box":
            return _json(200, {"box": self.studio.random_box(payload)})
        if path == "/api/generate":
            request = studio.parse_request(payload, self.studio.spec, self.studio.limits)
            try:
                job = self.queue.submit(request, request.num_images, request.steps)
            except jobs.QueueFull as e:
                raise studio.BadRequest(str(e), status=429) from e
            return _json(202, self.job_status(job))
        match = _JOB.match(path)
        if match and path.endswith("/cancel"):
            job = self.queue.cancel(match.group(1))
            if job is None:
                raise studio.BadRequest(f"no job {match.group(1)}", status=404)
            return _json(200, self.job_status(job))
        raise studio.BadRequest(f"no such action: POST {path}", status=404)

    def _job(self, job_id: str) -> jobs.Job:
        job = self.queue.get(job_id)
        if job is None:
            raise studio.BadRequest(f"no job {job_id} (finished jobs are kept for a while)", 404)
        return job


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Whole or absent: a server stopped mid-write leaves no truncated image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json(status: int, value: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(value).encode(), "application/json"


class Handler(http.server.BaseHTTPRequestHandler):
    app: App  # set on the subclass `make_server` builds
    server_version = "busgen-serve"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(lambda path: self.app.get(path))

    def do_POST(self) -> None:
        self._respond(lambda path: self.app.post(path, self._read_json()))

    def _not_allowed(self) -> None:
        self._respond(lambda path: _raise(studio.BadRequest(f"{self.command} is not allowed", 405)))

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _respond(self, route) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check_origin(path)
            status, body, kind = route(path)
        except studio.BadRequest as e:
            status, body, kind = _json(e.status, {"error": str(e)})
        except Exception:  # never a stack trace to the client; the server keeps serving
            logging.exception("%s %s failed", self.command, path)
            status, body, kind = _json(500, {"error": "internal error; see the server's log"})
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _check_origin(self, path: str) -> None:
        host = self.headers.get("Host", "")
        if self.app.allowed_hosts is not None and host not in self.app.allowed_hosts:
            raise studio.BadRequest(f"requests for host {host!r} are refused", status=403)
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            raise studio.BadRequest("cross-origin requests are refused", status=403)
        site = self.headers.get("Sec-Fetch-Site")
        page = self.command == "GET" and path in STATIC
        if site not in (None, "same-origin", "none") and not page:
            raise studio.BadRequest("cross-site requests are refused", status=403)

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise studio.BadRequest("a POST needs a Content-Length", status=411)
        if int(length) > MAX_BODY_BYTES:
            raise studio.BadRequest(f"request body over {MAX_BODY_BYTES} bytes", status=413)
        body = self.rfile.read(int(length))
        if self.headers.get_content_type() != "application/json":
            raise studio.BadRequest("the request body must be application/json", status=415)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise studio.BadRequest(f"malformed JSON: {e}") from e

    def log_message(self, format: str, *args: Any) -> None:
        logging.debug("%s - %s", self.address_string(), format % args)


def _raise(error: Exception):
    raise error


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(app: App, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Binds `host:port` (port 0 picks a free one) with the app behind the handler."""
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = (_Server6 if ":" in host else _Server)((host, port), handler)
    port = server.server_address[1]
    if is_loopback(host):
        app.allowed_hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
    return server


def url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
