"""Refuse before reading, and the HTTP parser's limits, over real sockets against uvicorn.

Raw sockets, so the test controls exactly how much of a request has been sent when the answer
arrives: an answer that comes while most of a body is still unsent was given without reading it.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from fruitpipe.api.settings import MULTIPART_OVERHEAD
from fruitpipe.imaging import MAX_BYTES

from .conftest import needs_shared
from .service_support import AUTH, TOKEN, fruit, live_server, make_app, make_backend

pytestmark = needs_shared
BOUNDARY = "fruitpipeboundary"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture()
def spool(monkeypatch):
    """Counts the temporary files Starlette's multipart parser opens (where bodies are spooled)."""
    import starlette.formparsers as fp
    opened: list[int] = []
    real = fp.SpooledTemporaryFile

    def counting(*a, **kw):  # type: ignore[no-untyped-def]
        opened.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(fp, "SpooledTemporaryFile", counting)
    return opened


@pytest.fixture()
def server(tmp_path):
    with live_server(make_app(make_backend(tmp_path / "store")), timeout_keep_alive=2) as url:
        host, port = url.removeprefix("http://").split(":")
        yield url, (host, int(port))


def head(path: str, length: int | None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {CTYPE}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def part_start(name: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 3.0) -> tuple[int, bytes]:
    """Status and raw bytes of the first response on ``sock`` (raises on timeout)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def send_then_answer(addr, request_head: bytes, body_sent: bytes) -> tuple[int, bytes, float]:
    """Send the head and the first bytes of a body, then wait for the answer; (status, raw, seconds).

    The rest of the body is never sent, so a server that waited for it would never answer: the
    answer arriving at all shows the refusal came before the body. The time bound only catches a
    server that reads on until some timeout; it is generous because the test machine is shared."""
    with socket.create_connection(addr, timeout=30) as s:
        t0 = time.monotonic()
        s.sendall(request_head + body_sent)
        status, raw = read_response(s)
        return status, raw, time.monotonic() - t0


@pytest.mark.parametrize("path, headers, status", [
    ("/upload-training-data", {}, 401),
    ("/upload-training-data", {"Authorization": "Bearer wrong"}, 403),
    ("/models/v1/activate", {}, 401),
    ("/retrain", {"Authorization": "Basic eDp5"}, 401),
])
def test_write_route_without_valid_token_is_refused_before_the_body(server, spool, path, headers, status):
    """A 600 MB anonymous upload: the 401/403 arrives while 599+ MB are unsent; nothing spooled."""
    _, addr = server
    code, raw, seconds = send_then_answer(addr, head(path, 600 << 20, headers), part_start() + b"0" * 65536)
    assert code == status and seconds < 20.0, (raw, seconds)
    assert b'"error"' in raw and spool == []


def test_rest_of_a_refused_body_is_not_read_for_ever(server):
    """After the 401 the client keeps streaming an endless chunked body: the server discards it
    and closes the connection after the timeout (2 s here) instead of reading it for ever."""
    _, addr = server
    chunk = b"%x\r\n%s\r\n" % (65536, b"0" * 65536)
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(head("/upload-training-data", None) + chunk)
        assert read_response(s)[0] == 401
        t0 = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - t0 < 15:
                s.sendall(chunk)
                time.sleep(0.005)
        assert time.monotonic() - t0 < 6


@pytest.mark.parametrize("path, files", [("/predict", 1), ("/predict/batch", 32), ("/upload-training-data", 64)])
def test_declared_length_over_the_route_limit_is_413_at_once(server, spool, path, files):
    """Each file route's limit is its own file count x the file limit (+ multipart overhead):
    /predict/batch allows 32 files, so 33 files' worth is refused before a byte is read."""
    _, addr = server
    limit = files * MAX_BYTES + MULTIPART_OVERHEAD
    code, raw, seconds = send_then_answer(addr, head(path, limit + 1, AUTH), part_start())
    assert code == 413 and seconds < 20.0 and f'"limit_bytes": {limit}'.encode() in raw, raw
    assert spool == []


def test_chunked_body_is_cut_off_at_the_limit_while_streaming(server, spool):
    """No Content-Length: the body is counted as it arrives and cut at /predict's limit with 413;
    the client is still sending when the answer comes."""
    url, addr = server
    limit = MAX_BYTES + MULTIPART_OVERHEAD
    chunk = b"0" * (1 << 20)
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(head("/predict", None) + b"%x\r\n%s\r\n" % (len(part_start()), part_start()))
        sent = 0
        status = None
        s.settimeout(0.05)
        while sent < 40 * len(chunk):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            try:
                status, raw = read_response(s, timeout=0.05)
                break
            except TimeoutError:
                continue
        assert status == 413 and b"too_large" in raw
        assert limit <= sent < limit + 8 * len(chunk)  # answered right after the limit, not at the end
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/health").status_code == 200


def test_wrong_content_type_is_415_before_the_body(server, spool):
    _, addr = server
    request = head("/predict", 300 << 20).replace(CTYPE.encode(), b"application/octet-stream")
    code, raw, seconds = send_then_answer(addr, request, b"0" * 65536)
    assert code == 415 and seconds < 20.0 and spool == []


def test_valid_requests_still_work_and_spool_as_usual(server, spool):
    """The counterpart of the refusals: an authorised upload is read (and spooled) as before."""
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/upload-training-data", headers=AUTH, data={"class_name": "freshapples"},
                   files=[("files", ("a.jpg", fruit("freshapples", 3), "image/jpeg"))])
        assert r.status_code == 200 and r.json()["added"] == 1
        r = c.post("/predict", files={"file": ("a.jpg", fruit("freshbanana"), "image/jpeg")})
        assert r.status_code == 200
    assert len(spool) >= 2


def test_huge_header_is_cut_off_and_others_are_served(server):
    """A client streaming a 65 MB header is refused after h11's 16 KiB head limit (400, closed);
    a normal client in parallel is answered at once."""
    url, addr = server
    outcome: dict[str, object] = {}

    def attacker() -> None:
        sent = 0
        with socket.create_connection(addr, timeout=10) as s:
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while sent < 65 << 20:
                    s.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                pass
            outcome["sent"] = sent
            try:
                s.settimeout(5)
                outcome["answer"] = s.recv(200)
            except OSError as exc:
                outcome["answer"] = repr(exc)

    t = threading.Thread(target=attacker)
    t.start()
    latencies = []
    with httpx.Client(base_url=url, timeout=5) as c:
        for _ in range(10):
            t0 = time.monotonic()
            assert c.get("/health").status_code == 200
            latencies.append(time.monotonic() - t0)
    t.join(30)
    assert not t.is_alive()
    assert outcome["sent"] < 16 << 20, outcome  # cut off long before 65 MB
    assert max(latencies) < 1.0, latencies


def test_request_head_trickled_slowly_is_timed_out(server):
    """uvicorn has no request-head timeout of its own; ours (timeout_keep_alive, 2 s here) closes a
    connection that has not completed its request head."""
    _, addr = server
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 8:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.5)
                if s.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and 1.5 < time.monotonic() - t0 < 5


def test_security_headers_on_every_answer(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as c:
        for path in ("/", "/static/app.js", "/static/style.css", "/health", "/nope"):
            r = c.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        r = c.post("/retrain")  # an answer of the guard itself
        assert r.status_code == 401 and r.headers["x-content-type-options"] == "nosniff"
        assert c.post("/retrain", headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (202, 409)


def test_docs_policy_allows_exactly_swagger_ui(server):
    """/docs loads Swagger UI from this server (no CDN): its own CSP allows this origin and exactly
    the page's inline script (by sha256), nothing else inline, nothing from elsewhere."""
    import base64
    import hashlib
    import re
    url, _ = server
    r = httpx.get(url + "/docs")
    csp = r.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "https:" not in csp and "unsafe-inline" not in csp
    assert "https://" not in r.text  # every asset from this server
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert httpx.get(f"{url}/docs-assets/{asset}").status_code == 200
    assert httpx.get(url + "/openapi.json").status_code == 200


def test_token_store_failure_denies_writes_with_503(tmp_path):
    """A token provider that fails (Secrets Manager unreachable) denies writes: 503, not a 500."""
    def broken() -> str:
        raise ConnectionError("secrets manager unreachable")

    app = make_app(make_backend(tmp_path / "store"))
    app.state.fruitpipe.settings.token_provider = broken
    with live_server(app) as url:
        r = httpx.post(url + "/retrain", headers=AUTH, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "auth_unavailable"


def test_guard_sees_every_route_and_knows_the_write_routes(tmp_path):
    """The guard reads the app's own route table (FastAPI's included routers opened up): every
    documented path is found, and exactly the routes with ``Depends(require_admin)`` are write
    routes. Fails loudly if a FastAPI upgrade changes how included routers are kept."""
    from fruitpipe.api.middleware import flat_routes, is_write_route
    app = make_app(make_backend(tmp_path / "store"))
    routes = flat_routes(app.router.routes)
    paths = {getattr(r, "path", None) for r in routes}
    assert set(app.openapi()["paths"]) <= paths
    assert {r.path for r in routes if is_write_route(r)} == {"/upload-training-data", "/retrain",
                                                              "/models/{version}/activate", "/review",
                                                              "/review/{prediction_id}",
                                                              "/review/{prediction_id}/image",
                                                              "/models/{version}/shadow", "/models/{version}/shadow/stop",
                                                              "/auth/check",
                                                              "/retrain/cancel"}


def test_auth_check_and_the_bearer_scheme_in_openapi(server):
    """GET /auth/check answers 204 for the admin token, 401/403 otherwise, and changes nothing;
    the OpenAPI document declares the bearer scheme, so /docs can send the token."""
    url, _ = server
    assert httpx.get(url + "/auth/check", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 204
    assert httpx.get(url + "/auth/check").status_code == 401
    assert httpx.get(url + "/auth/check", headers={"Authorization": "Bearer wrong"}).status_code == 403
    spec = httpx.get(url + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/retrain"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/predict"]["post"]


def test_a_large_head_sent_in_one_write_gets_431(server):
    """h11 bounds only a head still arriving; one sent whole is measured by RequestGuard (the
    new-user trial sent a 120,000-byte header in one write and got 200)."""
    url, addr = server
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = b""
        while b"request_head_too_large" not in answer and len(answer) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431") and b"request_head_too_large" in answer, answer[:200]
    r = httpx.get(url + "/health", headers={"X-Fine": "a" * 8000})
    assert r.status_code == 200
