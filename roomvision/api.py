"""REST API (FastAPI): GET /health, POST /v1/predict. Start with `python -m roomvision serve`."""
from __future__ import annotations

import ipaddress
import socket
import urllib.parse
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .config import MAX_UPLOAD_BYTES
from .decisions import decide
from .inference import Predictor

MAX_FILES = 64
MAX_REQUEST_BYTES = MAX_FILES * 8 * 1024 * 1024
URL_TIMEOUT_S = 10


class ImageResult(BaseModel):
    filename: str
    room: str | None = None
    room_confidence: float | None = None
    probabilities: dict[str, float] | None = None
    quality_prob_good: float | None = None
    quality_label: str | None = None
    aesthetic_score: float | None = None
    aesthetic_std: float | None = None
    listing_ready: bool | None = None
    listing_reason: str | None = None
    error: str = ""


class ThresholdsUsed(BaseModel):
    quality: float
    min_room_confidence: float
    listing_ready_min_aesthetic: float


class PredictResponse(BaseModel):
    model_version: str
    thresholds: ThresholdsUsed
    results: list[ImageResult]


def _check_public_host(host: str) -> None:
    """Refuse hosts that resolve to private, loopback, link-local or reserved addresses."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise HTTPException(400, f"image_url host not found: {host}") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global or ip.is_multicast:
            raise HTTPException(400, f"image_url host {host} resolves to a non-public address ({ip}); not allowed")


def fetch_image_url(url: str, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """Download an image from a public http(s) URL with a timeout, size cap and content-type check."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPException(400, "image_url must be an http(s) URL")
    _check_public_host(parts.hostname)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            raise HTTPException(400, "image_url redirects are not followed")

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "roomvision"}), timeout=URL_TIMEOUT_S) as r:
            ctype = r.headers.get("Content-Type", "")
            if not ctype.startswith("image/"):
                raise HTTPException(415, f"image_url content type is {ctype or 'missing'}, not image/*")
            data = r.read(max_bytes + 1)
    except HTTPException:
        raise
    except OSError as exc:
        raise HTTPException(502, f"could not fetch image_url: {exc}") from None
    if len(data) > max_bytes:
        raise HTTPException(413, f"image_url body larger than {max_bytes:,} bytes")
    return data


def create_app(weights: str | Path | None = None, device: str = "auto", allow_image_urls: bool = False) -> FastAPI:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["predictor"] = Predictor(weights, device=device)
        yield
        state.clear()

    app = FastAPI(title="roomvision", version="1", lifespan=lifespan,
                  description="Room type, photo quality and (proxy) aesthetic score for listing photos.")

    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return JSONResponse({"detail": f"request larger than {MAX_REQUEST_BYTES:,} bytes"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        p: Predictor = state["predictor"]
        return {"status": "ok", "model_version": p.version, "device": str(p.device), "classes": p.classes}

    @app.post("/v1/predict", response_model=PredictResponse)
    def predict(files: list[UploadFile] = File(default=[]), image_url: str | None = Form(default=None),
                quality_threshold: float | None = Form(default=None, ge=0.0, le=1.0),
                min_room_confidence: float | None = Form(default=None, ge=0.0, le=1.0),
                min_aesthetic: float | None = Form(default=None, ge=1.0, le=10.0)) -> PredictResponse:
        p: Predictor = state["predictor"]
        thresholds = p.thresholds.with_values(quality=quality_threshold, min_room_confidence=min_room_confidence,
                                              listing_ready_min_aesthetic=min_aesthetic)
        inputs: list[tuple[str, bytes]] = []
        if image_url:
            if not allow_image_urls:
                raise HTTPException(400, "image_url is disabled on this server (start it with --allow-image-urls)")
            inputs.append((image_url, fetch_image_url(image_url)))
        if len(files) + len(inputs) > MAX_FILES:
            raise HTTPException(413, f"at most {MAX_FILES} images per request")
        for f in files:
            inputs.append((f.filename or "upload", f.file.read(MAX_UPLOAD_BYTES + 1)))
        if not inputs:
            raise HTTPException(400, "send one or more images as multipart field 'files' (or an image_url)")
        results = []
        for row, _ in p.predict_named(inputs):
            if row["error"]:
                results.append(ImageResult(filename=row["path"], error=row["error"]))
                continue
            d = decide(row, thresholds, p.classes)
            results.append(ImageResult(
                filename=row["path"], room=d["room_decision"], room_confidence=d["room_confidence"],
                probabilities={c: row[f"prob_{c}"] for c in p.classes},
                quality_prob_good=row["quality_prob_good"], quality_label=d["quality_decision"],
                aesthetic_score=row["aesthetic_score"], aesthetic_std=row["aesthetic_std"],
                listing_ready=d["listing_ready"], listing_reason=d["listing_reason"]))
        return PredictResponse(model_version=p.version, thresholds=ThresholdsUsed(**vars(thresholds)),
                               results=results)

    return app
