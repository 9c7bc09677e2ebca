"""Token verification: what gets in, what is refused and why (the reason only goes to the log)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import TokenVerifier, Unauthorized, load_verification_key, token_from_auth
from gateway.config import ConfigError, Settings

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def claims(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {"sub": "user-1", "companies": ["A"], "exp": int(time.time()) + 60}
    base.update(extra)
    return base


def hs256() -> TokenVerifier:
    return TokenVerifier("HS256", SECRET)


def refused(verifier: TokenVerifier, token: object) -> str:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    return info.value.reason


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_valid_hs256_token_yields_its_claims() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert hs256().verify(token)["companies"] == ["A"]


def test_expired_token_is_refused() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    assert refused(hs256(), token) == "token expired"


def test_leeway_tolerates_small_clock_skew() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 2), SECRET, algorithm="HS256")
    assert TokenVerifier("HS256", SECRET, leeway_s=30).verify(token)["sub"] == "user-1"


def test_token_not_yet_valid_is_refused() -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 60), SECRET, algorithm="HS256")
    assert "nbf" in refused(hs256(), token)


def test_wrong_key_is_refused() -> None:
    token = jwt.encode(claims(), "another-secret-of-sufficient-length-000000", algorithm="HS256")
    assert refused(hs256(), token) == "bad signature"


def test_alg_none_is_refused() -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    assert refused(hs256(), token) == "algorithm not allowed"


def test_token_with_its_signature_stripped_is_refused() -> None:
    header, payload, _ = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    refused(hs256(), f"{header}.{payload}.")
    refused(hs256(), f"{header}.{payload}")


def test_forged_payload_under_a_real_signature_is_refused() -> None:
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged = b64(claims(companies=["B"]))
    assert refused(hs256(), f"{header}.{forged}.{signature}") == "bad signature"


@pytest.mark.parametrize("token", [None, "", 42, "not-a-jwt", "a.b.c", "x" * 10000])
def test_missing_or_malformed_token_is_refused(token: object) -> None:
    refused(hs256(), token)


def test_exp_and_sub_are_required() -> None:
    no_exp = {"sub": "u"}
    no_sub = {"exp": int(time.time()) + 60}
    assert refused(hs256(), jwt.encode(no_exp, SECRET, algorithm="HS256")) == "missing claim exp"
    assert refused(hs256(), jwt.encode(no_sub, SECRET, algorithm="HS256")) == "missing claim sub"


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier("HS256", SECRET, audience="gateway", issuer="https://auth.example")
    good = jwt.encode(claims(aud="gateway", iss="https://auth.example"), SECRET, algorithm="HS256")
    assert verifier.verify(good)["aud"] == "gateway"
    assert refused(verifier, jwt.encode(claims(aud="other", iss="https://auth.example"), SECRET, algorithm="HS256")) == "wrong audience"
    assert refused(verifier, jwt.encode(claims(aud="gateway", iss="https://evil.example"), SECRET, algorithm="HS256")) == "wrong issuer"
    assert "aud" in refused(verifier, jwt.encode(claims(iss="https://auth.example"), SECRET, algorithm="HS256"))


def test_audience_is_ignored_when_not_configured() -> None:
    token = jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256")
    assert hs256().verify(token)["aud"] == "anything"


def _write_public_key(tmp_path: Path, private_key: object) -> Path:
    pem = private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    return path


def test_rs256_with_a_public_key_file(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = _write_public_key(tmp_path, private)
    settings = Settings(jwt_algorithm="RS256", jwt_public_key_file=str(path))
    verifier = TokenVerifier.from_settings(settings)
    assert verifier.verify(jwt.encode(claims(), private, algorithm="RS256"))["sub"] == "user-1"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(verifier, jwt.encode(claims(), other, algorithm="RS256")) == "bad signature"
    # The classic confusion: an HS256 token "signed" with the public key as a shared secret.
    assert refused(verifier, jwt.encode(claims(), "public-key-as-secret-0000000000000000", algorithm="HS256")) == "algorithm not allowed"


def test_es256_with_a_public_key_file(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    path = _write_public_key(tmp_path, private)
    verifier = TokenVerifier.from_settings(Settings(jwt_algorithm="ES256", jwt_public_key_file=str(path)))
    assert verifier.verify(jwt.encode(claims(), private, algorithm="ES256"))["sub"] == "user-1"
    assert refused(verifier, jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")) == "bad signature"


def test_a_file_that_is_not_a_public_key_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY_FILE"):
        load_verification_key(Settings(jwt_algorithm="RS256", jwt_public_key_file=str(path)))


def test_settings_require_a_key_for_jwt_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings.from_env({})
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY_FILE"):
        Settings.from_env({"JWT_ALGORITHM": "rs256"})
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_env({"JWT_ALGORITHM": "ES256", "JWT_PUBLIC_KEY_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="AUTH_MODE"):
        Settings.from_env({"AUTH_MODE": "maybe"})
    assert Settings.from_env({"AUTH_MODE": "none"}).auth_mode == "none"
    parsed = Settings.from_env({"JWT_SECRET": SECRET, "API_KEYS": "a, b,", "CLIENT_EVENTS": "typing:conversation:*,cursor:doc:*"})
    assert parsed.api_keys == ("a", "b")
    assert parsed.client_events == ("typing:conversation:*", "cursor:doc:*")
    with pytest.raises(ConfigError, match="CLIENT_EVENTS"):
        Settings.from_env({"JWT_SECRET": SECRET, "CLIENT_EVENTS": "typing"})


def test_token_is_read_from_the_auth_payload() -> None:
    assert token_from_auth({"token": "abc"}) == "abc"
    assert token_from_auth({"token": "Bearer abc"}) == "abc"
    assert token_from_auth("abc") is None
    assert token_from_auth({}) is None
