"""Authentication on connect: a JWT in the client's `auth` payload, verified with PyJWT.

    io("https://gw.example", { auth: { token: "<jwt>" } })

One algorithm is configured and only that one is accepted, so neither `alg: none` nor an
HS256 token signed with an RS256 public key used as a secret can get through. `exp` and `sub`
are required (`sub` names the user for presence and the `user:<sub>` room); `nbf`, `aud` and `iss`
are checked when present or configured. A refused client learns only "unauthorized"; the reason
is logged.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import jwt

from .config import ConfigError, Settings

log = logging.getLogger("gateway.auth")

UNAUTHORIZED = "unauthorized"
MAX_TOKEN_LENGTH = 8192


class Unauthorized(Exception):
    """A token was missing, malformed, badly signed, expired or not for us; `reason` is for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_verification_key(settings: Settings) -> Any:
    """The key tokens are verified with: the HS256 secret, or the parsed PEM public key."""
    if settings.jwt_algorithm == "HS256":
        if not settings.jwt_secret:
            raise ConfigError("JWT_SECRET is required with JWT_ALGORITHM=HS256")
        return settings.jwt_secret
    path = settings.jwt_public_key_file
    if not path:
        raise ConfigError(f"JWT_PUBLIC_KEY_FILE is required with JWT_ALGORITHM={settings.jwt_algorithm}")
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY_FILE: cannot read {path!r}: {exc.strerror}") from None
    try:
        # Parse now, so a wrong file stops the process at start instead of refusing everyone.
        return jwt.get_algorithm_by_name(settings.jwt_algorithm).prepare_key(pem)
    except (ValueError, TypeError, jwt.PyJWTError, NotImplementedError) as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY_FILE: not a {settings.jwt_algorithm} public key in PEM form ({exc})") from None


class TokenVerifier:
    """Verifies tokens for one configured algorithm and key."""

    def __init__(self, algorithm: str, key: Any, *, audience: str | None = None, issuer: str | None = None, leeway_s: float = 0.0) -> None:
        self.algorithm = algorithm
        self.key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self._options = {"require": ["exp", "sub"], "verify_aud": audience is not None}

    @classmethod
    def from_settings(cls, settings: Settings) -> "TokenVerifier":
        return cls(
            settings.jwt_algorithm,
            load_verification_key(settings),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway_s=settings.jwt_leeway_ms / 1000,
        )

    def verify(self, token: Any) -> dict[str, Any]:
        """The token's claims; raises Unauthorized with a loggable reason."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("missing token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("token too long")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"missing claim {exc.claim}") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("algorithm not allowed") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthorized("sub must be a non-empty string")
        return claims


def token_from_auth(auth: Any) -> Any:
    """The token a client sent: `auth: {token}`; a `Bearer ` prefix is tolerated."""
    if not isinstance(auth, Mapping):
        return None
    token = auth.get("token")
    if isinstance(token, str) and token.startswith("Bearer "):
        token = token[len("Bearer "):]
    return token
