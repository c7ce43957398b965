"""The REST API with FastAPI's TestClient, and once against a real uvicorn on localhost."""
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient

from roomvision.api import MAX_FILES, create_app, fetch_image_url
from roomvision.config import CLASSES


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with TestClient(create_app(tiny_checkpoint, device="cpu")) as c:
        yield c


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_version"] == "tiny" and body["device"] == "cpu"


def test_predict_probabilities_and_per_image_errors(client, make_room):
    files = [("files", ("a.jpg", jpeg(make_room(1)), "image/jpeg")), ("files", ("bad.png", b"nope", "image/png")),
             ("files", ("b.jpg", jpeg(make_room(2)), "image/jpeg"))]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200
    body = r.json()
    results = body["results"]
    assert [x["filename"] for x in results] == ["a.jpg", "bad.png", "b.jpg"]
    assert "not an image" in results[1]["error"] and results[1]["room_decision"] is None
    assert body["thresholds"]["quality"] == pytest.approx(0.4)  # the checkpoint's calibrated default
    for x in (results[0], results[2]):
        assert abs(sum(x["probabilities"].values()) - 1) < 1e-5 and set(x["probabilities"]) == set(CLASSES)
        assert x["quality_decision"] in ("GOOD", "BAD") and isinstance(x["listing_ready"], bool)
        assert x["model_version"] == "tiny"


def test_clear_client_errors(client, make_room):
    assert client.post("/v1/predict").status_code == 400
    r = client.post("/v1/predict", files=[("files", ("a.jpg", b"x", "image/jpeg"))], data={"quality_threshold": "2"})
    assert r.status_code == 422
    many = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(MAX_FILES + 1)]
    assert client.post("/v1/predict", files=many).status_code == 413
    r = client.post("/v1/predict", data={"image_url": "http://example.com/a.jpg"})
    assert r.status_code == 400 and "disabled" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"x", headers={"content-length": str(10**10)})
    assert r.status_code == 413


NON_PUBLIC = "resolves to a non-public address"


@pytest.mark.parametrize("url,message", [
    ("http://127.0.0.1/a.jpg", NON_PUBLIC), ("http://localhost/a.jpg", NON_PUBLIC), ("http://10.1.2.3/a.jpg", NON_PUBLIC),
    ("http://169.254.169.254/latest", NON_PUBLIC), ("http://[::127.0.0.1]/a.jpg", NON_PUBLIC),
    ("http://[64:ff9b::7f00:1]/a.jpg", NON_PUBLIC), ("http://[2002:7f00:1::]/a.jpg", NON_PUBLIC),
    ("http://[fec0::1]/a.jpg", NON_PUBLIC), ("http://[::ffff:10.0.0.1]/a.jpg", NON_PUBLIC),
    ("http://[64:ff9b:1::a9fe:a9fe]/a.jpg", NON_PUBLIC),
    ("ftp://example.com/a.jpg", "image_url must be an http(s) URL"),
    ("file:///etc/passwd", "image_url must be an http(s) URL")])
def test_image_urls_to_private_hosts_or_other_schemes_are_refused(url, message):
    from fastapi import HTTPException
    with pytest.raises(HTTPException) as exc:
        fetch_image_url(url)
    assert exc.value.status_code == 400 and message in exc.value.detail


@pytest.mark.parametrize("address,public", [("8.8.8.8", True), ("2606:4700::1111", True), ("64:ff9b::808:808", True),
                                            ("2002:808:808::", True), ("::8.8.8.8", False), ("fec0::1", False),
                                            ("2002:a00:1::", False), ("::ffff:127.0.0.1", False)])
def test_ipv6_addresses_are_judged_by_the_ipv4_address_they_carry(address, public):
    import ipaddress
    from roomvision.api import is_public_address
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_real_uvicorn_on_localhost(tiny_checkpoint, make_room):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "roomvision", "serve", "--port", str(port), "--weights",
                             str(tiny_checkpoint), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read())
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not start")
        assert health["status"] == "ok"
        import httpx
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                       files=[("files", ("a.jpg", jpeg(make_room(4)), "image/jpeg"))], timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["room_decision"] in (*CLASSES, "uncertain")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def live_server(tiny_checkpoint):
    """The app under a real uvicorn in this process, with a 1 MB body limit, a 1 s body stall limit, a 2 s header
    deadline and 3 predictions admitted at once."""
    import threading
    import uvicorn
    from roomvision.api import header_timeout_protocol
    app = create_app(tiny_checkpoint, device="cpu", max_request_bytes=1 << 20, body_chunk_timeout=1.0,
                     max_in_flight=3)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           http=header_timeout_protocol(2.0)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield port
    server.should_exit = True
    thread.join(10)


def _raw_request(port: int, head: bytes, body_parts, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(head)
        try:
            for part in body_parts:
                s.sendall(part)
                time.sleep(pause)
        except OSError:
            pass  # the server may close the connection as soon as it has answered
        return _read_response(s)


def _read_response(s: socket.socket) -> bytes:
    """The whole HTTP response: headers, then as many body bytes as Content-Length says (they may come in several
    segments), or until the server closes."""
    answer = b""
    while True:
        try:
            chunk = s.recv(4096)
        except OSError:
            return answer
        answer += chunk
        head, sep, body = answer.partition(b"\r\n\r\n")
        lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")]
        if not chunk or (sep and lengths and len(body) >= lengths[0]):
            return answer


def test_chunked_body_over_the_limit_gets_413_while_streaming(live_server):
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n%s\r\n" % (65536, b"x" * 65536)] * 40
    answer = _raw_request(live_server, head, chunks)  # 2.5 MB, no Content-Length
    assert answer.startswith(b"HTTP/1.1 413") and b"request larger than 1,048,576 bytes" in answer


def test_a_stalled_body_gets_408(live_server):
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    started = time.monotonic()
    answer = _raw_request(live_server, head, [b"--b\r\n"], pause=3)
    assert answer.startswith(b"HTTP/1.1 408") and b"too slowly" in answer
    assert time.monotonic() - started < 10
    assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{live_server}/health", timeout=5).read())["status"] == "ok"


@pytest.fixture
def drip_server():
    """A local HTTP server answering image/jpeg, then one byte per 0.5 s (a slow-drip attacker)."""
    import http.server
    import threading

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_image_url_has_one_total_deadline(drip_server):
    from fastapi import HTTPException
    started = time.monotonic()
    with pytest.raises(HTTPException) as exc:
        fetch_image_url(f"http://127.0.0.1:{drip_server}/a.jpg", timeout=2, allow=lambda ip: True)
    assert exc.value.status_code == 504 and "longer than 2 s" in exc.value.detail
    assert time.monotonic() - started < 4


def test_image_url_connects_to_the_address_it_checked(drip_server, monkeypatch):
    """The name is resolved once: a second answer (DNS rebinding to a private address) is never used."""
    from fastapi import HTTPException
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", drip_server))],
                    [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", drip_server))]])
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: next(answers))
    with pytest.raises(HTTPException) as exc:
        fetch_image_url(f"http://rebind.test:{drip_server}/a.jpg", timeout=1.5,
                        allow=lambda ip: str(ip) == "127.0.0.1")
    assert exc.value.status_code == 504  # it connected (to the vetted address) and got the drip
    assert next(answers)[0][4][0] == "10.0.0.1"  # the second answer was never asked for


@pytest.mark.parametrize("url,phrase", [("http://127.0.0.1:8799\\@1.2.3.4/x", "credentials or backslashes"),
                                        ("http://user:pw@example.com/a.jpg", "credentials"),
                                        ("http://[::1/a.jpg", "not a valid URL"),
                                        ("http://example.com:99999/a.jpg", "not a valid URL")])
def test_malformed_image_urls_are_400(url, phrase):
    from fastapi import HTTPException
    with pytest.raises(HTTPException) as exc:
        fetch_image_url(url)
    assert exc.value.status_code == 400 and phrase in exc.value.detail


def test_a_thousand_parts_are_refused_while_parsing(client, tiny_checkpoint):
    """The file count is enforced as the form is parsed: the 65th file part ends the request with 413 (against a
    running server with the default body limit, then the field limits)."""
    import threading
    import httpx
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_checkpoint, device="cpu"), host="127.0.0.1", port=0,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        many = [("files", (f"{i}.jpg", b"x" * 1000, "image/jpeg")) for i in range(1000)]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=many, timeout=60)
        assert r.status_code == 413
        assert f"Too many files. Maximum number of files is {MAX_FILES}" in r.json()["detail"]
    finally:
        server.should_exit = True
    r = client.post("/v1/predict", files=many)
    assert r.status_code == 413 and f"Too many files. Maximum number of files is {MAX_FILES}" in r.json()["detail"]
    fields = {f"f{i}": "1" for i in range(100)}
    r = client.post("/v1/predict", files=[("files", ("a.jpg", b"x", "image/jpeg"))], data=fields)
    assert r.status_code == 413 and "Too many fields" in r.json()["detail"]
    r = client.post("/v1/predict", files=[("files", ("a.jpg", b"x", "image/jpeg"))], data={"image_url": "x" * 70_000})
    assert r.status_code == 413 and "exceeded maximum size" in r.json()["detail"]


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "inf", "abc"])
def test_a_threshold_out_of_range_is_named(client, value):
    r = client.post("/v1/predict", files=[("files", ("a.jpg", b"x", "image/jpeg"))], data={"quality_threshold": value})
    assert r.status_code == 422 and r.json()["detail"] == f"quality_threshold must be a number from 0 to 1, not '{value}'"


def test_health_answers_at_once_and_overload_gets_503_with_retry_after(live_server, make_room):
    """Eight clients keep the scorer busy: /health still answers in milliseconds; beyond the admitted three,
    predict requests are told to retry rather than queued without end."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor
    body = [("files", (f"{i}.jpg", jpeg(make_room(i, (1600, 1200))), "image/jpeg")) for i in range(6)]
    url = f"http://127.0.0.1:{live_server}"

    def post(_):
        return httpx.post(f"{url}/v1/predict", files=body, timeout=120)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, i) for i in range(8)]
        time.sleep(1.0)
        waits = []
        for _ in range(5):
            start = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
            waits.append(time.perf_counter() - start)
        answers = [f.result() for f in futures]
    assert sorted(waits)[2] < 0.5, waits
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 3 and set(codes) <= {200, 503} and 503 in codes
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["Retry-After"] == "2" and "busy" in busy.json()["detail"]


def test_slow_headers_are_cut_off(live_server):
    """A client dribbling its request line and headers is disconnected at the header deadline (2 s here)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", live_server), timeout=15) as s:
        closed = False
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
                time.sleep(0.25)
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except OSError:
                closed = True
                break
    assert closed and 1.5 < time.monotonic() - start < 6
