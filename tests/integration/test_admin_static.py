"""The admin UI's files at /admin/ (gateway/ops/static.py): a real gateway process serving a folder
built here (ADMIN_UI_DIR), asked over raw sockets so that nothing normalises the paths on the way.

1. content types and cache headers: hashed assets long-lived and immutable, index.html and other
   files revalidated; the page seeds the UI's server URL with its own origin;
2. /admin redirects to /admin/; a directory answers its index.html or 404, never a listing;
3. traversal: `..`, `%2e%2e`, `..%2f`, double encoding, NUL, backslash, dot files, symlinks out
   of the folder are refused and the file outside is never sent; a symlink inside is served;
4. HEAD answers GET's headers without a body; other methods 405 with Allow;
5. a file over ADMIN_UI_MAX_FILE_BYTES is not served; every refusal is counted in /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings
from gateway.ops.static import CACHE_IMMUTABLE, CACHE_REVALIDATE, inject_seed, seed_script
from tests.gateway_process import GatewayProcess
from tests.integration.test_http_limits import Response, connect, get, read_response
from tests.integration.test_resilience import metric

APP = "tests.sio_app"
SECRET = b"outside-the-ui-folder-4242"
MAX_FILE_BYTES = 4096
INDEX = b'<!DOCTYPE html><html><head><title>ui</title></head><body><div id="app"></div><script src="js/app.0d7d7845.js"></script></body></html>'

# name -> (bytes, expected Content-Type)
FILES = {
    "js/app.0d7d7845.js": (b"console.log(1)", "text/javascript; charset=utf-8"),
    "js/app.0d7d7845.js.map": (b'{"version":3}', "application/json"),
    "css/app.6e3b9661.css": (b"body{}", "text/css; charset=utf-8"),
    "img/logo-dark.3727fec5.svg": (b"<svg/>", "image/svg+xml"),
    "favicon.png": (b"\x89PNG\r\n\x1a\nfake", "image/png"),
    "favicon.ico": (b"\x00\x00\x01\x00", "image/x-icon"),
    "manifest.json": (b"{}", "application/json"),
    "fonts/mdi.1a2b3c4d.woff": (b"wOFF", "font/woff"),
    "fonts/mdi.1a2b3c4d.woff2": (b"wOF2", "font/woff2"),
    "data.bin": (b"\x00\x01", "application/octet-stream"),
}


@pytest.fixture(scope="module")
def ui_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("admin-ui")
    (base / "secret.txt").write_bytes(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_bytes(SECRET)
    root = base / "dist"
    root.mkdir()
    (root / "index.html").write_bytes(INDEX)
    for name, (data, _) in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<p>sub</p>")
    (root / "empty").mkdir()
    (root / ".hidden").write_bytes(SECRET)
    (root / "big.txt").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    (root / "link-out").symlink_to(base / "outside")  # a folder symlink leading out
    (root / "escape.txt").symlink_to(base / "secret.txt")  # a file symlink leading out
    (root / "alias.css").symlink_to(root / "css" / "app.6e3b9661.css")  # stays inside
    return root


@pytest.fixture(scope="module")
def node(ui_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"ADMIN_UI_DIR": str(ui_folder), "ADMIN_UI_MAX_FILE_BYTES": str(MAX_FILE_BYTES), "LOG_LEVEL": "INFO"}
    gateway = GatewayProcess(APP, env=env, log_dir=tmp_path_factory.mktemp("logs")).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def request(node: GatewayProcess, raw_path: str, method: str = "GET") -> Response:
    """One request whose path goes on the wire exactly as written."""
    with connect(node.port) as sock:
        sock.sendall(get(raw_path, "Connection: close", method=method))
        response = read_response(sock, head_only=method == "HEAD")
    assert response is not None, f"{method} {raw_path}: connection closed without an answer"
    return response


def refused(node: GatewayProcess, reason: str) -> float:
    return metric(node, "sio_gateway_admin_ui_refused_total", reason=reason)


# -- 1. content types, cache headers, the seeded server URL -----------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_content_type_and_cache_headers(node: GatewayProcess, name: str) -> None:
    data, content_type = FILES[name]
    response = request(node, "/admin/" + name)
    assert response.status == 200, response.body
    assert response.body == data
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    hashed = any(part in name for part in (".0d7d7845.", ".6e3b9661.", ".3727fec5.", ".1a2b3c4d."))
    assert response.headers["cache-control"] == (CACHE_IMMUTABLE if hashed else CACHE_REVALIDATE)


def test_index_is_revalidated_and_seeds_the_server_url(node: GatewayProcess) -> None:
    response = request(node, "/admin/")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-frame-options"] == "DENY"
    body = response.body
    # The UI's own page, with the seed ahead of its first script: a fresh browser's UI connects
    # to the origin that served it, at SIO_PATH, unless the operator saved another server.
    seed = seed_script("/socket.io")
    assert body.replace(seed, b"") == INDEX
    assert body.index(seed) < body.index(b'<script src="js/app')
    assert b'setItem("server_url",location.origin)' in seed and b'"path","/socket.io"' in seed
    assert request(node, "/admin/index.html").body == body


def test_seed_cannot_close_the_script() -> None:
    seed = seed_script("/io</script><script>alert(1)")
    assert seed.count(b"</script>") == 1 and seed.endswith(b"</script>")
    assert inject_seed(b"<p>no head</p>", b"<s>") == b"<s><p>no head</p>"
    assert inject_seed(b"<head></head>", b"<s>") == b"<head><s></head>"


# -- 2. redirect, directories -----------------------------------------------------------------------


def test_bare_mount_redirects_to_the_folder(node: GatewayProcess) -> None:
    response = request(node, "/admin")
    assert response.status == 301
    assert response.headers["location"] == "/admin/"
    assert request(node, "/admin?lang=fr").headers["location"] == "/admin/?lang=fr"


def test_directory_answers_its_index_or_404_never_a_listing(node: GatewayProcess) -> None:
    sub = request(node, "/admin/sub/")
    assert (sub.status, sub.body) == (200, b"<p>sub</p>")
    assert sub.headers["content-type"] == "text/html; charset=utf-8"
    for path in ("/admin/empty/", "/admin/js/", "/admin/js", "/admin/css", "/admin/missing.js"):
        response = request(node, path)
        assert response.status == 404, path
        assert b"app." not in response.body, f"{path} listed the folder"


# -- 3. traversal -------------------------------------------------------------------------------------

TRAVERSALS = [
    "/admin/../secret.txt",
    "/admin/js/../../secret.txt",
    "/admin/%2e%2e/secret.txt",
    "/admin/%2E%2E/secret.txt",
    "/admin/..%2fsecret.txt",
    "/admin/%2e%2e%2fsecret.txt",
    "/admin/js/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/admin/%252e%252e/secret.txt",  # double encoding
    "/admin/%252e%252e%252fsecret.txt",
    "/admin/..%5csecret.txt",  # backslash
    "/admin/index.html%00.js",  # NUL
    "/admin/.hidden",
    "/admin/%2ehidden",
]


@pytest.mark.parametrize("raw_path", TRAVERSALS)
def test_traversal_is_refused(node: GatewayProcess, raw_path: str) -> None:
    before = refused(node, "path")
    response = request(node, raw_path)
    assert response.status == 400, (raw_path, response.status, response.body)
    assert SECRET not in response.body
    assert refused(node, "path") == before + 1


@pytest.mark.parametrize("raw_path", ["/admin/link-out/secret.txt", "/admin/escape.txt"])
def test_symlink_out_of_the_folder_is_not_followed(node: GatewayProcess, raw_path: str) -> None:
    before = refused(node, "path")
    response = request(node, raw_path)
    assert response.status == 404
    assert SECRET not in response.body
    assert refused(node, "path") == before + 1


def test_absolute_looking_paths_stay_inside(node: GatewayProcess, ui_folder: Path) -> None:
    outside = (ui_folder.parent / "secret.txt").as_posix()
    for raw_path in ("/admin//etc/passwd", "/admin/" + outside, "/admin/" + outside.replace("/", "%2f")):
        response = request(node, raw_path)
        assert response.status == 404, raw_path
        assert SECRET not in response.body and b"root:" not in response.body


def test_symlink_inside_the_folder_is_served(node: GatewayProcess) -> None:
    response = request(node, "/admin/alias.css")
    assert (response.status, response.body) == (200, b"body{}")


# -- 4. methods ---------------------------------------------------------------------------------------


def test_head_sends_the_headers_only(node: GatewayProcess) -> None:
    full = request(node, "/admin/css/app.6e3b9661.css")
    with connect(node.port) as sock:
        # HEAD, then GET on the same connection: a body after the HEAD would spoil the second answer.
        sock.sendall(get("/admin/css/app.6e3b9661.css", method="HEAD"))
        buffer = bytearray()
        head = read_response(sock, buffer, head_only=True)
        assert head is not None and head.status == 200
        assert head.headers["content-length"] == str(len(full.body))
        assert head.headers["content-type"] == full.headers["content-type"]
        assert head.headers["cache-control"] == full.headers["cache-control"]
        assert bytes(buffer) == b""
        sock.sendall(get("/admin/favicon.png", "Connection: close"))
        after = read_response(sock, buffer)
    assert after is not None and (after.status, after.body) == (200, FILES["favicon.png"][0])


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_refused(node: GatewayProcess, method: str) -> None:
    before = refused(node, "method")
    with connect(node.port) as sock:
        sock.sendall(get("/admin/index.html", "Content-Length: 0", "Connection: close", method=method))
        response = read_response(sock)
    assert response is not None and response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert refused(node, "method") == before + 1


# -- 5. size bound, and without ADMIN_UI_DIR ----------------------------------------------------------


def test_file_over_the_size_bound_is_not_served(node: GatewayProcess) -> None:
    before = refused(node, "too_large")
    response = request(node, "/admin/big.txt")
    assert response.status == 404
    assert len(response.body) < MAX_FILE_BYTES
    assert refused(node, "too_large") == before + 1
    assert "admin_ui_file_too_large" in node.log_tail(200)


def test_admin_ui_dir_must_hold_an_index(tmp_path: Path, ui_folder: Path) -> None:
    with pytest.raises(ConfigError, match="ADMIN_UI_DIR"):
        Settings.from_env({"ADMIN_UI_DIR": str(tmp_path), "AUTH_MODE": "none"})
    assert Settings.from_env({"ADMIN_UI_DIR": str(ui_folder), "AUTH_MODE": "none"}).admin_ui_dir == str(ui_folder)
    assert Settings.from_env({"AUTH_MODE": "none"}).admin_ui_dir is None


def test_nothing_is_served_without_admin_ui_dir(tmp_path: Path) -> None:
    gateway = GatewayProcess(APP, env={"ADMIN_UI_DIR": ""}, log_dir=tmp_path).start()
    try:
        assert request(gateway, "/admin/").status == 404
        assert request(gateway, "/admin").status == 404
    finally:
        gateway.stop()

