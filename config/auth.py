"""Tokens signed by the wider platform: who the caller is and what roles they hold.

HS256 with a shared secret or RS256 with the platform's public key; `aud` and `exp` are
required, the algorithm is pinned (so `alg=none` and algorithm swaps are refused).
"""

from __future__ import annotations

import enum
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from config.errors import Forbidden, Unauthorized
from config.settings import Settings


class Role(enum.StrEnum):
    REPRESENTATIVE = "representative"
    MODERATOR = "moderator"
    HOST = "host"
    ADMIN = "admin"


class AuthError(Unauthorized):
    """The caller could not be identified."""


class NotAllowed(Forbidden):
    """The caller is known but may not do this."""


@dataclass(frozen=True, slots=True)
class Principal:
    rep: str
    name: str
    roles: frozenset[Role]
    expires_at: float

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def is_staff(self) -> bool:
        return Role.ADMIN in self.roles


MAX_TOKEN_BYTES = 8192


class TokenVerifier:
    def __init__(self, *, key: str | bytes, algorithm: str, audience: str, issuer: str, leeway: float):
        self._key = key
        self._algorithm = algorithm
        self._audience = audience
        self._issuer = issuer or None
        self._leeway = leeway

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        if settings.jwt_public_key is not None:
            key: str | bytes = settings.jwt_public_key.read_bytes()
            algorithm = "RS256"
        else:
            key, algorithm = settings.jwt_secret, "HS256"
        return cls(
            key=key,
            algorithm=algorithm,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("a token is required: send `Authorization: Bearer <token>`")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("the token is too large")
        options: jwt.types.Options = {"require": ["exp", "sub", "aud"]}
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired; sign in again") from None
        except jwt.InvalidAudienceError:
            raise AuthError(
                f"the token is not meant for this service (audience must be {self._audience!r})"
            ) from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token was issued by an unknown issuer") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"the token must be signed with {self._algorithm}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthError("the token is invalid (bad signature or malformed)") from None
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    sub, name, raw_roles = claims.get("sub"), claims.get("name", ""), claims.get("roles", [])
    if not isinstance(sub, str) or not 0 < len(sub) <= 64:
        raise AuthError("the token's 'sub' must be a representative id")
    if not isinstance(name, str) or len(name) > 100:
        raise AuthError("the token's 'name' must be text")
    if not isinstance(raw_roles, list):
        raise AuthError("the token's 'roles' must be a list")
    try:
        roles = frozenset(Role(r) for r in raw_roles)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise AuthError(f"the token names an unknown role; roles are {known}") from None
    return Principal(rep=sub, name=name or sub, roles=roles, expires_at=float(claims["exp"]))


def mint_token(
    settings: Settings,
    *,
    rep: str,
    name: str = "",
    roles: list[Role] | tuple[Role, ...] = (Role.REPRESENTATIVE,),
    ttl: float = 3600.0,
    private_key: Path | None = None,
    now: float | None = None,
) -> str:
    """Sign a token the node accepts: for development, the demo and tests."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": rep,
        "name": name or rep,
        "roles": [Role(r).value for r in roles],
        "aud": settings.jwt_audience,
        "iat": int(issued),
        "exp": int(issued + ttl),
        "jti": secrets.token_hex(8),
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if private_key is not None:
        return jwt.encode(claims, private_key.read_bytes(), algorithm="RS256")
    if settings.jwt_public_key is not None:
        raise AuthError("this node verifies RS256 tokens: pass the platform's private key to sign")
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def require_role(principal: Principal, *roles: Role, action: str) -> None:
    """Admins may do anything staff may; everyone else needs one of `roles`."""
    if not principal.has(Role.ADMIN, *roles):
        needed = " or ".join(r.value for r in (*roles, Role.ADMIN))
        raise NotAllowed(f"{action} needs the {needed} role")


def local_secret(data_dir: Path) -> str:
    """The signing secret of a development node that was given none: random, kept in
    `data_dir/jwt-secret` (mode 600) so tokens minted by `tribune token` stay valid."""
    path = data_dir / "jwt-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


def with_signing_key(settings: Settings) -> Settings:
    """Settings that can verify tokens: as configured, or with the data directory's secret."""
    if settings.jwt_secret or settings.jwt_public_key is not None:
        return settings
    return settings.replace(jwt_secret=local_secret(settings.data_dir))
