"""REST API (FastAPI): GET /health, POST /v1/predict, GET /v1/models, POST /v1/feedback. Start with
`python -m roomvision serve`."""
from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import MAX_UPLOAD_BYTES
from .inference import Predictor, results_frame
from .learning.collection import UPLOADS, add_upload, get_collection, record_feedback
from .learning.stores import LabelError
from .modelinfo import CheckpointError
from .versions import find_version, version_files, versions_table

MAX_FILES = 64
MAX_FORM_FIELDS = 16          # text fields of a predict form (image_url and four thresholds)
MAX_FIELD_BYTES = 64 * 1024   # one text field
MAX_IN_FLIGHT = 8             # predict requests admitted at once; more get 503
MAX_LOADED_VERSIONS = 3       # model versions (the `model` field) kept loaded besides the default
RETRY_AFTER_S = 2
HEADER_TIMEOUT_S = 10         # a request's line and headers must arrive within this
MAX_REQUEST_BYTES = MAX_FILES * 8 * 1024 * 1024
URL_TIMEOUT_S = 10          # the whole image_url fetch, from name lookup to last byte
BODY_CHUNK_TIMEOUT_S = 20   # a request body that sends nothing for this long is cut off
BODY_TOTAL_TIMEOUT_S = 120  # and the whole body must arrive within this


class BodyLimitMiddleware:
    """ASGI middleware: a request body larger than `max_bytes` gets 413, counted as it streams (Content-Length or
    chunked), and one that stalls or dribbles gets 408, without the application reading any further."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES, chunk_timeout: float = BODY_CHUNK_TIMEOUT_S,
                 total_timeout: float = BODY_TOTAL_TIMEOUT_S):
        self.app, self.max_bytes = app, max_bytes
        self.chunk_timeout, self.total_timeout = chunk_timeout, total_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, 413, f"request larger than {self.max_bytes:,} bytes")
        state = {"received": 0, "refused": False, "started": False}
        deadline = time.monotonic() + self.total_timeout

        async def guarded_receive():
            if state["refused"]:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.01, min(self.chunk_timeout,
                                                                          deadline - time.monotonic())))
            except asyncio.TimeoutError:
                await self._refuse_once(state, send, 408, "request body arrived too slowly")
                return {"type": "http.disconnect"}
            state["received"] += len(message.get("body", b""))
            if state["received"] > self.max_bytes:
                await self._refuse_once(state, send, 413, f"request larger than {self.max_bytes:,} bytes")
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            if not state["refused"]:
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise

    async def _refuse_once(self, state: dict, send, status: int, detail: str) -> None:
        if not state["started"]:
            await self._refuse(send, status, detail)
        state["refused"] = True

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, NAT64, 6to4, Teredo's server), if any."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[0]
    if any(ip in net for net in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast only: no private, loopback, link-local, site-local, reserved or multicast address, also not
    one wrapped in an IPv6 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo)."""
    if ip.version == 6:
        if ip in IPV4_COMPATIBLE or ip.is_site_local:
            return False
        if (inner := embedded_ipv4(ip)) is not None and not is_public_address(inner):
            return False
    return ip.is_global and not ip.is_multicast


def _vetted_address(host: str, port: int, allow) -> tuple[int, tuple]:
    """Resolve `host` once; every address must pass `allow`; the first is the one connected to (no rebinding)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise HTTPException(400, f"image_url host not found: {host}") from None
    refused = [info[4][0] for info in infos if not allow(ipaddress.ip_address(info[4][0].split("%")[0]))]
    if refused or not infos:
        raise HTTPException(400, f"image_url host {host} resolves to a non-public address "
                                 f"({refused[0] if refused else 'none'}); not allowed")
    return infos[0][0], infos[0][4]


def fetch_image_url(url: str, max_bytes: int = MAX_UPLOAD_BYTES, timeout: float = URL_TIMEOUT_S,
                    allow=is_public_address) -> bytes:
    """Download an image from a public http(s) URL: one total deadline, the connection pinned to the address that
    was checked, no redirects, no credentials, a size cap and an image/* content type."""
    deadline = time.monotonic() + timeout
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise HTTPException(400, "image_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise HTTPException(400, "image_url must be an http(s) URL")
    if parts.username is not None or parts.password is not None or "\\" in parts.netloc:
        raise HTTPException(400, "image_url must not contain credentials or backslashes in the host part")
    port = port or (443 if parts.scheme == "https" else 80)
    family, address = _vetted_address(host, port, allow)

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HTTPException(504, f"image_url took longer than {timeout:g} s")
        return left

    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(remaining())
        sock.connect(address)  # the checked address itself: no second name lookup
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=remaining())
        conn.sock = sock  # the vetted address, never a second lookup
        conn.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                     headers={"User-Agent": "roomvision", "Accept": "image/*"})
        sock.settimeout(remaining())
        response = conn.getresponse()
        if 300 <= response.status < 400:
            raise HTTPException(400, "image_url redirects are not followed")
        if response.status != 200:
            raise HTTPException(502, f"image_url answered HTTP {response.status}")
        ctype = response.headers.get("Content-Type", "")
        if not ctype.startswith("image/"):
            raise HTTPException(415, f"image_url content type is {ctype or 'missing'}, not image/*")
        chunks, size = [], 0
        while size <= max_bytes:
            sock.settimeout(remaining())
            chunk = response.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        remaining()
    except HTTPException:
        raise
    except socket.timeout:
        raise HTTPException(504, f"image_url took longer than {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise HTTPException(502, f"could not fetch image_url: {exc}") from None
    finally:
        if "sock" in locals():
            sock.close()
    if size > max_bytes:
        raise HTTPException(413, f"image_url body larger than {max_bytes:,} bytes")
    return b"".join(chunks)


class ImageResult(BaseModel):
    """One image: the columns of the results CSV/Parquet (`inference.results_frame`), probabilities grouped."""
    filename: str
    model_version: str | None = None
    room_decision: str | None = None
    room_confidence: float | None = None
    probabilities: dict[str, float] | None = None
    in_scope_prob: float | None = None
    out_of_scope: bool | None = None
    quality_prob_good: float | None = None
    quality_decision: str | None = None
    aesthetic_score: float | None = None
    aesthetic_std: float | None = None
    listing_ready: bool | None = None
    listing_reason: str | None = None
    error: str = ""


class ThresholdsUsed(BaseModel):
    quality: float
    min_room_confidence: float
    listing_ready_min_aesthetic: float
    min_in_scope: float


class PredictResponse(BaseModel):
    model_version: str
    thresholds: ThresholdsUsed
    results: list[ImageResult]


THRESHOLD_FIELDS = {"quality_threshold": ("quality", 0.0, 1.0),
                    "min_room_confidence": ("min_room_confidence", 0.0, 1.0),
                    "min_aesthetic": ("listing_ready_min_aesthetic", 1.0, 10.0),
                    "min_in_scope": ("min_in_scope", 0.0, 1.0)}
PREDICT_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": MAX_FILES},
        "image_url": {"type": "string"}, "model": {"type": "string", "description": "a version from /v1/models"},
        **{field: {"type": "number", "minimum": lo, "maximum": hi} for field, (_, lo, hi) in THRESHOLD_FIELDS.items()},
    }}}}}}


def _threshold(form, field: str, low: float, high: float) -> float | None:
    """A threshold form field as a number in [low, high] (None when absent); 422 naming the field otherwise."""
    text = form.get(field)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not low <= value <= high:
        raise HTTPException(422, f"{field} must be a number from {low:g} to {high:g}, not {str(text)[:40]!r}")
    return value


async def _read_form(request: Request):
    """The multipart form, with the number of files and fields and the size of text fields limited while it is
    parsed (a request of a thousand parts is refused at the 65th, before it is stored)."""
    try:
        return await request.form(max_files=MAX_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except StarletteHTTPException as exc:
        too_many = "Too many" in str(exc.detail) or "exceeded maximum size" in str(exc.detail)
        raise HTTPException(413 if too_many else 400, f"multipart form refused: {exc.detail}") from None


def create_app(weights: str | Path | None = None, device: str = "auto", allow_image_urls: bool = False,
               max_request_bytes: int = MAX_REQUEST_BYTES, body_chunk_timeout: float = BODY_CHUNK_TIMEOUT_S,
               max_in_flight: int = MAX_IN_FLIGHT, profile: str = "default") -> FastAPI:
    """The API app; `max_in_flight` predict requests are admitted at once (one scored, the others queued), the
    next gets 503 with Retry-After; `profile` "fast" serves every version's INT8 model."""
    state: dict = {"in_flight": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["predictor"] = Predictor(weights, device=device, profile=profile)
        state["gate"] = threading.Semaphore(1)  # one batch at a time: flat memory, and the cores are shared anyway
        yield
        state.pop("predictor", None)

    app = FastAPI(title="roomvision", version="1", lifespan=lifespan,
                  description="Room type, photo quality and (proxy) aesthetic score for listing photos.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes, chunk_timeout=body_chunk_timeout)

    @app.get("/health")
    async def health() -> dict:
        """Liveness, answered on the event loop: never waits behind predictions."""
        p: Predictor = state["predictor"]
        return {"status": "ok", "model_version": p.version, "device": str(p.device), "profile": p.profile,
                "classes": p.classes,
                "predictions_in_flight": state["in_flight"]}

    @app.get("/v1/models")
    async def models() -> dict:
        """The model versions this server can use (`model` field of /v1/predict) and the one serving by default."""
        table = versions_table(version_files(), state["predictor"].weights)
        return {"default": state["predictor"].version,
                "models": json.loads(table.drop(columns="path").to_json(orient="records"))}

    def predictor_for(name: str | None) -> Predictor:
        """The default predictor, or the version named (loaded once, a few kept)."""
        if not name:
            return state["predictor"]
        try:
            path = find_version(name)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        loaded = state.setdefault("versions", {})
        if str(path) not in loaded:
            if len(loaded) >= MAX_LOADED_VERSIONS:
                loaded.pop(next(iter(loaded)))
            try:
                loaded[str(path)] = Predictor(path, device=device, profile=profile)
            except (CheckpointError, ValueError) as exc:  # ValueError: no INT8 model for it (fast profile)
                raise HTTPException(422, str(exc)) from None
        return loaded[str(path)]

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict:
        """A correction for a photo: multipart `image` (or `sha256` of a photo sent before), `room` (a class,
        AMBIGUOUS or NOT_A_ROOM) and/or `quality` (GOOD or BAD), `annotator`, optional `collection` (default:
        uploads) and `model_version` (what scored it). Stored in the collection's label stores."""
        form = await _read_form(request)
        image, sha = form.get("image"), str(form.get("sha256") or "")
        name = str(form.get("collection") or UPLOADS)
        try:
            if isinstance(image, StarletteUploadFile):
                data = await image.read(MAX_UPLOAD_BYTES + 1)
                if len(data) > MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"image larger than {MAX_UPLOAD_BYTES:,} bytes")
                if name != UPLOADS:
                    raise ValueError("an image joins the uploads collection; to correct a photo of another "
                                     "collection, send its sha256")
                sha = (await run_in_threadpool(add_upload, data, image.filename or "upload"))["sha256"]
            elif not sha:
                raise ValueError("send the photo as multipart field 'image', or the sha256 of a photo sent before")
            saved = await run_in_threadpool(
                record_feedback, get_collection(name), sha, str(form.get("room") or "") or None,
                str(form.get("quality") or "") or None, str(form.get("annotator") or ""),
                str(form.get("model_version") or ""))
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"collection": name, "sha256": sha, "saved": saved}

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra=PREDICT_FORM)
    async def predict(request: Request) -> PredictResponse:
        """Multipart form: `files` (up to MAX_FILES images), or `image_url`, and optional thresholds."""
        if state["in_flight"] >= max_in_flight:
            raise HTTPException(503, f"busy: {state['in_flight']} requests are being scored; retry shortly",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        state["in_flight"] += 1  # on the event loop: no lock needed
        try:
            form = await _read_form(request)
            files = [f for f in form.getlist("files") if isinstance(f, StarletteUploadFile)]
            image_url = form.get("image_url") or None
            if len(form.getlist("files")) != len(files) or not isinstance(image_url, (str, type(None))):
                raise HTTPException(400, "'files' must be file parts and 'image_url' a text field")
            model = form.get("model")
            p = await run_in_threadpool(predictor_for, model if isinstance(model, str) else None)
            thresholds = p.thresholds.with_values(**{name: _threshold(form, field, *bounds)
                                                     for field, (name, *bounds) in THRESHOLD_FIELDS.items()})
            if len(files) + bool(image_url) > MAX_FILES:
                raise HTTPException(413, f"at most {MAX_FILES} images per request")
            if image_url and not allow_image_urls:
                raise HTTPException(400, "image_url is disabled on this server (start it with --allow-image-urls)")
            if not files and not image_url:
                raise HTTPException(400, "send one or more images as multipart field 'files' (or an image_url)")
            return await run_in_threadpool(_score, p, thresholds, image_url, files)
        finally:
            state["in_flight"] -= 1

    def _score(p: Predictor, thresholds, image_url: str | None, files: list) -> PredictResponse:
        inputs: list[tuple[str, object]] = [(image_url, fetch_image_url(image_url))] if image_url else []
        inputs += [(f.filename or "upload", f.file) for f in files]  # each read only when its turn comes
        with state["gate"]:
            scored = p.predict_named(inputs)
        table = results_frame([row for row, _ in scored], p.classes, thresholds, decimals=None)
        results = []
        for row in json.loads(table.to_json(orient="records")):  # NaN -> null
            if row["error"]:
                results.append(ImageResult(filename=row["path"], model_version=row["model_version"],
                                           error=row["error"]))
                continue
            probabilities = {c: row.pop(f"prob_{c}") for c in p.classes}
            results.append(ImageResult(filename=row["path"], probabilities=probabilities,
                                       **{k: v for k, v in row.items() if k in ImageResult.model_fields}))
        return PredictResponse(model_version=p.version, thresholds=ThresholdsUsed(**vars(thresholds)),
                               results=results)

    return app


def header_timeout_protocol(seconds: float = HEADER_TIMEOUT_S):
    """uvicorn's h11 protocol with a deadline for each request's line and headers, counted from the connection
    (or the previous response): a client that sends them slowly, or not at all, is disconnected."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            self._header_deadline.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if getattr(self, "_header_deadline", None) is not None:
                self._header_deadline.cancel()
            self._header_deadline = self.loop.call_later(seconds, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # still no complete request
                self.transport.close()

    return HeaderTimeoutProtocol


def serve(app: FastAPI, host: str, port: int, header_timeout: float = HEADER_TIMEOUT_S) -> None:
    """Run the API under uvicorn with the header deadline."""
    import uvicorn
    uvicorn.run(app, host=host, port=port, http=header_timeout_protocol(header_timeout))

