"""Bearer tokens: only valid HS256/RS256 tokens pass; roles gate writes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import AUDIENCE, ISSUER, KID, SECRET, Keys, Running, auth, new_tenant, token

TASK = {"name": "t", "work": {"kind": "handler", "name": "noop"}}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unsigned(tenant: str) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    claims = {"sub": "mallory", "tenant": tenant, "roles": ["admin"], "aud": AUDIENCE, "exp": exp}
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _tampered(tenant: str) -> str:
    good = token(tenant, ["viewer"])
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _hs256_with_public_key(tenant: str, keys: Keys) -> str:
    """The algorithm-confusion attack: HS256 "signed" with the RS256 public key as the secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    claims = {"sub": "mallory", "tenant": tenant, "roles": ["admin"], "aud": AUDIENCE, "iss": ISSUER, "exp": exp}
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(keys.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _bad_token(case: str, keys: Keys) -> str:
    tenant = "victim"
    past = datetime.now(UTC) - timedelta(hours=1)
    match case:
        case "expired":
            return token(tenant, exp=past, iat=past - timedelta(hours=1))
        case "not yet valid":
            return token(tenant, nbf=datetime.now(UTC) + timedelta(hours=1))
        case "tampered":
            return _tampered(tenant)
        case "unsigned (alg none)":
            return _unsigned(tenant)
        case "wrong audience":
            return token(tenant, aud="another-api")
        case "no audience":
            return token(tenant, aud=None)
        case "wrong issuer":
            return token(tenant, iss="https://evil.test")
        case "no expiry":
            return token(tenant, exp=None)
        case "wrong secret":
            return token(tenant, key="another-secret-that-is-long-enough-0123456789")
        case "HS512":
            return token(tenant, alg="HS512", key=SECRET * 2)
        case "RS256 by a key not in the JWKS":
            return token(tenant, key=keys.stranger, alg="RS256", headers={"kid": KID})
        case "RS256 with an unknown kid":
            return token(tenant, key=keys.private, alg="RS256", headers={"kid": "nope"})
        case "HS256 signed with the RSA public key":
            return _hs256_with_public_key(tenant, keys)
        case "tenant with a slash":
            return token("a/b")
        case "tenant with a trailing newline":  # `$` matched before it: "acme\n" was another tenant
            return token("acme\n")
        case "tenant with a trailing CRLF":
            return token("acme\r\n")
        case "subject not Unicode (lone surrogate)":
            return token(tenant, sub="\ud800")
        case "roles not a list":
            return token(tenant, roles="admin")  # type: ignore[arg-type]
        case _:
            return "definitely-not-a-jwt"


BAD_TOKENS = [
    "expired",
    "not yet valid",
    "tampered",
    "unsigned (alg none)",
    "wrong audience",
    "no audience",
    "wrong issuer",
    "no expiry",
    "wrong secret",
    "HS512",
    "RS256 by a key not in the JWKS",
    "RS256 with an unknown kid",
    "HS256 signed with the RSA public key",
    "tenant with a slash",
    "tenant with a trailing newline",
    "tenant with a trailing CRLF",
    "subject not Unicode (lone surrogate)",
    "roles not a list",
    "not a JWT",
]


@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_bad_tokens_are_401_with_a_bearer_challenge(cold_api: Running, keys: Keys, case: str) -> None:
    bad = _bad_token(case, keys)
    for method, url in (("GET", "/v1/tasks"), ("POST", "/v1/tasks"), ("GET", "/v1/events/stream")):
        r = await cold_api.http.request(
            method, url, headers={"Authorization": f"Bearer {bad}"}, json=TASK if method == "POST" else None
        )
        assert r.status_code == 401, (method, url, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="scheduler", error="invalid_token"')
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["status"] == 401 and problem["type"] == "/problems/unauthorized"
        assert problem["instance"] == url


async def test_missing_or_malformed_header_is_401(cold_api: Running) -> None:
    for headers in ({}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, {"Authorization": "Bearer "}):
        r = await cold_api.http.get("/v1/tasks", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_rs256_from_the_jwks_is_accepted(cold_api: Running, keys: Keys) -> None:
    tenant = new_tenant()
    good = token(tenant, ["viewer"], key=keys.private, alg="RS256", headers={"kid": KID})
    r = await cold_api.http.get("/v1/tasks", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200, r.text
    assert r.json() == {"items": [], "next_cursor": None}


async def test_roles(cold_api: Running) -> None:
    http, tenant = cold_api.http, new_tenant()
    missing = "00000000-0000-4000-8000-000000000000"
    # Viewers and role-less tokens cannot write; operators cannot create, update or delete.
    for roles in ([], ["viewer"], ["auditor"]):
        r = await http.post("/v1/tasks", json=TASK, headers=auth(tenant, roles))
        assert r.status_code == 403, (roles, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        for action in ("pause", "resume", "trigger"):
            r = await http.post(f"/v1/tasks/{missing}/{action}", headers=auth(tenant, roles))
            assert r.status_code == 403, (roles, action)
        r = await http.post(f"/v1/executions/{missing}/cancel", headers=auth(tenant, roles))
        assert r.status_code == 403
    operator = auth(tenant, ["operator"])
    assert (await http.post("/v1/tasks", json=TASK, headers=operator)).status_code == 403
    assert (await http.put(f"/v1/tasks/{missing}", json=TASK, headers=operator)).status_code == 403
    assert (await http.delete(f"/v1/tasks/{missing}", headers=operator)).status_code == 403
    # ...but may run commands on tasks (here: one that does not exist, so 404, not 403).
    assert (await http.post(f"/v1/tasks/{missing}/pause", headers=operator)).status_code == 404
    # Role-less tokens cannot even read.
    assert (await http.get("/v1/tasks", headers=auth(tenant, []))).status_code == 403
    assert (await http.get("/v1/tasks", headers=auth(tenant, ["viewer"]))).status_code == 200
