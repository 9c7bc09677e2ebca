"""Deployment settings without any server: X-Forwarded-For trust, Redis URLs (Sentinel, TLS), and
the nginx configuration rendered from the project's nginx.conf (checked by `nginx -t` itself)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.redis.client import (
    RedisSettingsError,
    SentinelMasterClient,
    SentinelTarget,
    parse_sentinel_url,
    redis_client,
    tls_options,
)
from gateway.config import ConfigError, Settings
from gateway.proxies import TrustedProxies
from gateway.topology import NGINX_CONF, TopologyError, nginx_command, render_nginx_conf

# -- X-Forwarded-For ---------------------------------------------------------------------------------


def test_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    assert proxies.client_address("203.0.113.5", "1.2.3.4") == "203.0.113.5"
    assert TrustedProxies([]).client_address("127.0.0.1", "1.2.3.4") == "127.0.0.1"


def test_trusted_chain_is_walked_from_the_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    assert proxies.client_address("127.0.0.1", "198.51.100.7") == "198.51.100.7"
    # the client wrote the leftmost entry itself; the first untrusted hop from the right wins
    assert proxies.client_address("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3") == "198.51.100.7"
    # every hop trusted: the leftmost is the best we know
    assert proxies.client_address("127.0.0.1", "10.0.0.9, 10.0.0.8") == "10.0.0.9"
    # no header: the peer
    assert proxies.client_address("127.0.0.1", None) == "127.0.0.1"


def test_garbage_in_the_header_stops_the_walk() -> None:
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert proxies.client_address("127.0.0.1", "198.51.100.7, unknown, 10.0.0.2") == "10.0.0.2"
    assert proxies.client_address("127.0.0.1", "not-an-ip") == "127.0.0.1"


def test_ports_brackets_and_ipv6() -> None:
    proxies = TrustedProxies(["::1", "127.0.0.1"])
    assert proxies.client_address("::1", "[2001:db8::1]:5555") == "2001:db8::1"
    assert proxies.client_address("::ffff:127.0.0.1", "192.0.2.1:8080") == "192.0.2.1"
    assert proxies.client_address("127.0.0.1", "2001:db8::2") == "2001:db8::2"


def test_trusted_proxies_setting_is_validated() -> None:
    settings = Settings.from_env({"TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1", "AUTH_MODE": "none"})
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        Settings.from_env({"TRUSTED_PROXIES": "nginx.local", "AUTH_MODE": "none"})


# -- Redis URLs ----------------------------------------------------------------------------------------


def test_sentinel_url_forms() -> None:
    assert parse_sentinel_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster") == SentinelTarget(
        (("127.0.0.1", 26379), ("127.0.0.1", 26380)), "mymaster"
    )
    target = parse_sentinel_url("redis+sentinel://:s%40cret@sentinel-a,[::1]:5000/main/3")
    assert target.sentinels == (("sentinel-a", 26379), ("::1", 5000))
    assert (target.master, target.db, target.username, target.password) == ("main", 3, None, "s@cret")


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379",  # no master
        "redis+sentinel:///mymaster",  # no sentinel
        "redis+sentinel://127.0.0.1:99999/mymaster",
        "redis+sentinel://127.0.0.1:26379/mymaster/x",
        "redis+sentinel://127.0.0.1:26379/mymaster?ssl=true",
    ],
)
def test_bad_sentinel_urls_are_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": url, "AUTH_MODE": "none"})


def test_sentinel_client_asks_the_sentinels_for_the_master() -> None:
    settings = Settings(redis_url="redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/2")
    client = redis_client(settings, socket_timeout=None)
    try:
        assert isinstance(client, SentinelMasterClient)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 2
        assert client.sentinel is not None and len(client.sentinel.sentinels) == 2
        # a sentinel that does not answer must not hold a reconnect for long
        assert client.sentinel.sentinel_kwargs["socket_timeout"] == 1.0
    finally:
        asyncio.run(client.aclose())
    assert client.sentinel is None


def _pem(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return str(path)


def test_tls_options(tmp_path: Path) -> None:
    ca = _pem(tmp_path, "ca.crt")
    verified = tls_options(Settings(redis_url="rediss://127.0.0.1:6380", redis_tls_ca_file=ca))
    assert verified["ssl_ca_certs"] == ca and verified["ssl_cert_reqs"] == "required" and verified["ssl_check_hostname"] is True
    insecure = tls_options(Settings(redis_url="rediss://127.0.0.1:6380", redis_tls_insecure=True))
    assert insecure["ssl_cert_reqs"] == "none" and insecure["ssl_check_hostname"] is False
    assert tls_options(Settings(redis_url="redis://127.0.0.1:6379")) == {}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"redis_url": "redis://127.0.0.1:6379", "redis_tls_ca_file": "CA"}, "not rediss://"),
        ({"redis_url": "redis://127.0.0.1:6379", "redis_tls_insecure": True}, "REDIS_TLS_INSECURE"),
        ({"redis_url": "rediss://127.0.0.1:6380", "redis_tls_cert_file": "CA"}, "go together"),
        ({"redis_url": "rediss://127.0.0.1:6380", "redis_tls_ca_file": "/nonexistent/ca.pem"}, "cannot read"),
    ],
)
def test_tls_settings_that_would_not_do_what_they_say_are_refused(tmp_path: Path, fields: dict, message: str) -> None:
    fields = {k: (_pem(tmp_path, "ca.crt") if v == "CA" else v) for k, v in fields.items()}
    with pytest.raises(RedisSettingsError, match=message):
        redis_client(Settings(**fields))


# -- nginx.conf ------------------------------------------------------------------------------------------


def test_rendered_nginx_conf_keeps_the_project_file_and_swaps_ports(tmp_path: Path) -> None:
    template = NGINX_CONF.read_text()
    text = render_nginx_conf(template, [4001, 4002, 4003, 4004], 4080, tmp_path)
    start = text.index("upstream sio_gateway {")
    upstream = text[start : text.index("}", start)]
    assert [line.strip() for line in upstream.splitlines() if line.strip().startswith("server ")] == [
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;" for port in (4001, 4002, 4003, 4004)
    ]
    assert "ip_hash;" in upstream and "keepalive" in upstream and "zone sio_gateway" in upstream
    assert "listen 127.0.0.1:4080;" in text and "listen 8080;" not in text
    for directive in ("proxy_set_header Upgrade $http_upgrade;", "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "proxy_read_timeout 60s;", "proxy_read_timeout 3s;"):
        assert directive in text
    assert f"proxy_temp_path {tmp_path / 'proxy'};" in text


def test_rendered_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), [4001, 4002], 4080, tmp_path))
    argv = nginx_command(nginx, tmp_path, conf)
    result = subprocess.run([*argv[:-2], "-t", "-g", argv[-1]], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    assert b"syntax is ok" in result.stderr


def test_render_refuses_a_file_it_cannot_map() -> None:
    with pytest.raises(TopologyError, match="upstream sio_gateway"):
        render_nginx_conf("http { server { listen 80; } }", [1], 2, Path("/tmp"))
    with pytest.raises(TopologyError, match="one `listen`"):
        render_nginx_conf("http {\n upstream sio_gateway {\n  server a:1;\n }\n server { listen 80; }\n server { listen 81; }\n}\n", [1], 2, Path("/tmp"))
