"""Bearer JWT authentication, roles, and the caller's tenant.

Only two algorithms are accepted: HS256 (when a secret is configured) and RS256 (a PEM public
key, or a JWKS looked up by ``kid``). The algorithm is chosen by the token's header but only
from the configured set, and the key is bound to it, so ``alg: none`` and algorithm confusion
(an RS256 public key used as an HMAC secret) are refused. Claims: ``sub`` (the actor),
``tenant``, ``roles`` (a list; ``viewer``, ``operator``, ``admin``), ``exp`` (required).
The tenant comes only from the token, never from the request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

from api.errors import Forbidden, Unauthorized
from api.settings import ApiSettings

TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Tenants are short and never contain ``/``: internal task ids are ``<tenant>/<id>``. Matched in
full: ``$`` would also match before a trailing newline and let ``"acme\n"`` be another tenant."""
ACTOR_MAX = 200


class Role(IntEnum):
    """Roles, ordered: each includes the ones below it."""

    VIEWER = 1
    """Read tasks, executions, statistics and the event stream."""
    OPERATOR = 2
    """Viewer, plus trigger, pause, resume and cancel."""
    ADMIN = 3
    """Operator, plus create, update and delete."""


_ROLE_NAMES = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    actor: str
    """The token's ``sub``."""
    tenant: str
    role: Role | None
    """The highest role the token grants (None: no known role)."""

    def require(self, needed: Role) -> None:
        """Raise :class:`~api.errors.Forbidden` unless the caller has ``needed`` (or more)."""
        if self.role is None or self.role < needed:
            raise Forbidden(f"this operation needs the {needed.name.lower()} role")


class TokenVerifier:
    """Verifies bearer tokens with the keys configured in :class:`~api.settings.ApiSettings`."""

    def __init__(self, settings: ApiSettings) -> None:
        self._hs_secret = settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else None
        self._rsa_key: Any = None
        self._jwks: dict[str, Any] = {}
        if settings.jwt_public_key_file is not None:
            self._rsa_key = RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(settings.jwt_public_key_file.read_bytes())
        if settings.jwt_jwks_file is not None:
            for jwk in json.loads(settings.jwt_jwks_file.read_text()).get("keys", []):
                if jwk.get("kty") == "RSA" and jwk.get("alg", "RS256") == "RS256" and jwk.get("use", "sig") == "sig":
                    kid = jwk.get("kid")
                    if kid:
                        self._jwks[kid] = RSAAlgorithm.from_jwk(jwk)
        if self._hs_secret is None and self._rsa_key is None and not self._jwks:
            raise ValueError(
                "no way to verify tokens: set SCHED_JWT_HS256_SECRET, SCHED_JWT_PUBLIC_KEY_FILE or SCHED_JWT_JWKS_FILE"
            )
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds

    def _key_for(self, header: dict[str, Any]) -> tuple[str, Any]:
        alg = header.get("alg")
        if alg == "HS256" and self._hs_secret is not None:
            return alg, self._hs_secret
        if alg == "RS256":
            kid = header.get("kid")
            if isinstance(kid, str) and kid in self._jwks:
                return alg, self._jwks[kid]
            if self._rsa_key is not None and kid is None:
                return alg, self._rsa_key
            if self._rsa_key is not None and not self._jwks:
                return alg, self._rsa_key
            if self._jwks or self._rsa_key is not None:
                raise Unauthorized("unknown key id")
        raise Unauthorized(f"token algorithm {alg!r} is not accepted")

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; :class:`~api.errors.Unauthorized` for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg, key = self._key_for(header)
        required = ["exp", "sub"]
        if self._audience is not None:
            required.append("aud")
        if self._issuer is not None:
            required.append("iss")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("wrong token audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("wrong token issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        except (ValueError, TypeError):  # e.g. a key the algorithm cannot use
            raise Unauthorized("invalid token") from None
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    actor, tenant, roles = claims.get("sub"), claims.get("tenant"), claims.get("roles", [])
    if not isinstance(actor, str) or not 0 < len(actor) <= ACTOR_MAX or not utf8_encodable(actor):
        raise Unauthorized("the 'sub' claim must be a non-empty string of valid Unicode")
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise Unauthorized("the 'tenant' claim must match " + TENANT_PATTERN.pattern)
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("the 'roles' claim must be a list of strings")
    granted = [_ROLE_NAMES[r] for r in roles if r in _ROLE_NAMES]
    return Principal(actor=actor, tenant=tenant, role=max(granted) if granted else None)


def utf8_encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (JSON on Kafka, BSON in the views, a problem document).

    JSON text, a token's claims included, may spell a lone surrogate (``"\\ud800"``) that Python's
    JSON reader turns into a string no UTF-8 encoder accepts.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        raise Unauthorized()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    return token.strip()
