"""Encryption of sensitive task fields at rest: AES-256-GCM tokens with a key id.

A sensitive value (an ``Authorization`` header, a param marked sensitive) never travels or
rests in clear: the API (or any service producing commands) replaces it with a **token**::

    enc:v1:<kid>:<base64url(nonce | ciphertext+tag)>

a plain string, so it fits ``dict[str, str]`` headers and any JSON, and views store it as is.
The plaintext is the value's JSON. The associated data binds the token to its place: the
tenant, the task id and the JSON pointer of the value in the task definition (``/work/headers/
Authorization``, ``/params/db/password``). A token copied into another tenant's task, another
task or another field does not decrypt. Only the executors decrypt, right before the work runs.

Keys: a map of key id -> 32 random bytes. One key (the active one) encrypts; every listed key
decrypts, so a key rotates by adding a new one, making it active, and dropping the old one once
no task holds a token of it. Keys come from settings (``SCHED_SECRET_KEYS`` or
``SCHED_SECRET_KEYS_FILE``, ``SCHED_SECRET_ACTIVE_KEY``); this module does no other I/O.

Readers see :data:`MARKER` instead of a token; sending the marker back in an update keeps the
stored secret (so GET-then-PUT works without the client knowing the value).

Services that produce commands straight to Kafka encrypt with :func:`seal_definition` /
:func:`seal_params` (or ``scheduler secrets encrypt``); ``scheduler secrets new-key`` makes a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ValidationError

from schemas._types import SECRET_MARKER, SECRET_TOKEN_PREFIX
from schemas.specs import HttpWork, TaskDefinition, Work

TOKEN_PREFIX = SECRET_TOKEN_PREFIX
"""Start of every token (version 1: AES-256-GCM, 96-bit random nonce, JSON plaintext)."""
MARKER = SECRET_MARKER
"""What readers see instead of a secret; in an update it means "keep the stored secret"."""
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
"""HTTP headers whose values are always secrets (case insensitive)."""
HEADER_PLACES = ("/work/headers", "/work/poll/headers", "/work/cancel/headers")
"""JSON pointers (in a task definition) of the header maps of HTTP work."""

_AD_PREFIX = b"scheduler-secret:v1"
_NONCE_BYTES = 12
_KEY_BYTES = 32
_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MIN_SCRUB = 4
"""Clear values shorter than this are not scrubbed from results (they would mangle them)."""


class SecretError(ValueError):
    """A sensitive value cannot be sealed or opened; ``pointer`` names where it is."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(f"{pointer}: {message}")
        self.pointer = pointer
        self.message = message


class KeyConfigError(ValueError):
    """The configured keys are unusable (bad base64, wrong length, unknown active key id)."""


# ---------------------------------------------------------------------------------------------
# Keys and the AEAD
# ---------------------------------------------------------------------------------------------


class Keyring:
    """Keys by id; ``active`` encrypts, all of them decrypt."""

    def __init__(self, keys: Mapping[str, bytes], active: str | None = None) -> None:
        """:raises KeyConfigError: no keys, a key id or key that is not usable, an unknown active id."""
        if not keys:
            raise KeyConfigError("no secret keys given")
        for kid, key in keys.items():
            if not _KID.fullmatch(kid):
                raise KeyConfigError(f"secret key id {kid!r}: use 1-64 letters, digits, '_', '.' or '-'")
            if len(key) != _KEY_BYTES:
                raise KeyConfigError(f"secret key {kid!r}: must be {_KEY_BYTES} bytes, got {len(key)}")
        if active is None:
            if len(keys) > 1:
                raise KeyConfigError(
                    "several secret keys are configured: name the active one (SCHED_SECRET_ACTIVE_KEY)"
                )
            active = next(iter(keys))
        if active not in keys:
            raise KeyConfigError(f"the active secret key {active!r} is not among the configured keys")
        self.active = active
        """Id of the key that encrypts."""
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}

    @property
    def kids(self) -> list[str]:
        """Ids of every key that decrypts."""
        return sorted(self._aead)

    def encrypt(self, value: Any, *, tenant: str, task_id: str, pointer: str) -> str:
        """A token of ``value`` (any JSON value) bound to its tenant, task and place."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead[self.active].encrypt(nonce, orjson.dumps(value), _ad(tenant, task_id, pointer))
        return f"{TOKEN_PREFIX}{self.active}:{_b64(nonce + sealed)}"

    def decrypt(self, token: str, *, tenant: str, task_id: str, pointer: str) -> Any:
        """The value of a token found at ``pointer`` of ``task_id``.

        :raises SecretError: malformed, unknown key id, or not for this tenant, task and place
            (or altered).
        """
        if not is_token(token):
            raise SecretError(pointer, "not an encrypted value")
        kid, _, data = token[len(TOKEN_PREFIX) :].partition(":")
        aead = self._aead.get(kid)
        if aead is None:
            raise SecretError(pointer, f"encrypted with key {kid!r}, which this process does not have")
        try:
            raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raise SecretError(pointer, "malformed encrypted value") from None
        if len(raw) < _NONCE_BYTES + 16:
            raise SecretError(pointer, "malformed encrypted value")
        try:
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _ad(tenant, task_id, pointer))
        except InvalidTag:
            raise SecretError(
                pointer, "cannot be decrypted: it was encrypted for another tenant, task or field, or altered"
            ) from None
        return orjson.loads(plain)


def _ad(tenant: str, task_id: str, pointer: str) -> bytes:
    return b"\x00".join((_AD_PREFIX, tenant.encode(), task_id.encode(), pointer.encode()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_keys(raw: Mapping[str, str]) -> dict[str, bytes]:
    """Key id -> key bytes from key id -> base64 (standard or URL-safe alphabet).

    :raises KeyConfigError: a value that is not base64.
    """
    keys: dict[str, bytes] = {}
    for kid, text in raw.items():
        try:
            keys[kid] = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise KeyConfigError(f"secret key {kid!r} is not base64") from None
    return keys


def load_keyring(keys: Mapping[str, str], keys_file: Path | None, active: str | None) -> Keyring | None:
    """The keyring of a process: ``keys`` merged with the JSON map in ``keys_file``; None if none.

    :raises KeyConfigError: unreadable file, bad keys, or an active key id without keys.
    """
    merged = dict(keys)
    if keys_file is not None:
        try:
            loaded = json.loads(keys_file.read_text())
        except (OSError, ValueError) as exc:
            raise KeyConfigError(f"cannot read the secret keys file {keys_file}: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise KeyConfigError(f"{keys_file}: expected a JSON object of key id -> base64 key")
        merged.update(loaded)
    if not merged:
        if active is not None:
            raise KeyConfigError(f"the active secret key {active!r} is set but no keys are configured")
        return None
    return Keyring(parse_keys(merged), active)


def new_key() -> str:
    """A fresh key, base64 (32 random bytes)."""
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode()


def token_id(token: str) -> str:
    """A short digest of a token: tells tokens apart without telling anything about the value."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Finding tokens and sensitive places
# ---------------------------------------------------------------------------------------------


def is_token(value: Any) -> bool:
    """True for a string that is an encrypted value."""
    return isinstance(value, str) and value.startswith(TOKEN_PREFIX)


def escape(part: str) -> str:
    """One reference token of a JSON pointer (RFC 6901)."""
    return part.replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def tokens(value: Any, base: str = "") -> dict[str, str]:
    """Every token inside ``value``, by its JSON pointer (prefixed with ``base``)."""
    found: dict[str, str] = {}
    stack: list[tuple[str, Any]] = [(base, value)]
    while stack:
        pointer, item = stack.pop()
        if is_token(item):
            found[pointer] = item
        elif isinstance(item, Mapping):
            stack.extend((f"{pointer}/{escape(str(k))}", v) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{pointer}/{i}", v) for i, v in enumerate(item))
    return found


def redact(value: Any) -> Any:
    """``value`` with every token replaced by :data:`MARKER` (what any reader is shown)."""
    if is_token(value):
        return MARKER
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def secret_ids(definition: TaskDefinition | Mapping[str, Any]) -> dict[str, str]:
    """Pointer -> :func:`token_id` of every token in a task definition."""
    doc = definition.model_dump(mode="python") if isinstance(definition, TaskDefinition) else definition
    return {pointer: token_id(tok) for pointer, tok in sorted(tokens(doc).items())}


def _get(doc: Any, pointer: str) -> tuple[bool, Any]:
    """``(found, value)`` at a JSON pointer."""
    cur = doc
    for raw in pointer.split("/")[1:]:
        part = _unescape(raw)
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


def _set(doc: Any, pointer: str, value: Any) -> None:
    """Replace the (existing) value at a JSON pointer."""
    *parents, last = pointer.split("/")[1:]
    _, parent = _get(doc, "/" + "/".join(parents)) if parents else (True, doc)
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        parent[_unescape(last)] = value


def sensitive_places(doc: Mapping[str, Any]) -> list[str]:
    """JSON pointers of the values of a task definition (as a dict) that must be encrypted.

    Headers named in :data:`SENSITIVE_HEADERS` or in the work's ``sensitive_headers`` (any case)
    of ``work.headers``, ``work.poll.headers`` and ``work.cancel.headers``; shell work's ``env``
    variables named in its ``sensitive_env``; and the params at the definition's
    ``sensitive_params`` pointers, in ``params`` and (handler work) ``work.params``.
    """
    work = doc.get("work") or {}
    names = SENSITIVE_HEADERS | {h.lower() for h in work.get("sensitive_headers") or ()}
    places: list[str] = []
    for base in HEADER_PLACES:
        found, headers = _get(doc, base)
        if found and isinstance(headers, dict):
            places.extend(f"{base}/{escape(name)}" for name in headers if name.lower() in names)
    env = work.get("env")
    if isinstance(env, dict):  # shell work
        places.extend(f"/work/env/{escape(name)}" for name in work.get("sensitive_env") or () if name in env)
    for pointer in doc.get("sensitive_params") or ():
        for base in ("/params", "/work/params"):
            if _get(doc, base + pointer)[0]:
                places.append(base + pointer)
    places.extend(webhook_secret_places(doc.get("notifications") or (), "/notifications"))
    return places


def webhook_secret_places(rules: Iterable[Any], base: str) -> list[str]:
    """JSON pointers (under ``base``) of the webhook secrets of notification rules (as dicts)."""
    return [
        f"{base}/{i}/channel/secret"
        for i, rule in enumerate(rules)
        if isinstance(rule, Mapping)
        and isinstance(rule.get("channel"), Mapping)
        and rule["channel"].get("kind") == "webhook"
        and "secret" in rule["channel"]
    ]


def mask_clear(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (a definition, or an event body with ``work``) with any clear value at a
    sensitive place replaced by :data:`MARKER`; tokens stay.

    The API never sends clear values, but a service producing commands straight to Kafka
    might: the views then hold the marker, not the value (the executor refuses such work).
    """
    for pointer in sensitive_places(doc):
        if not is_token(_get(doc, pointer)[1]):
            _set(doc, pointer, MARKER)
    return doc


# ---------------------------------------------------------------------------------------------
# Sealing (API, or any service producing commands) and opening (executors)
# ---------------------------------------------------------------------------------------------

NO_KEY = (
    "this deployment has no encryption key for secrets (set SCHED_SECRET_KEYS or SCHED_SECRET_KEYS_FILE); "
    "sensitive values are never stored in clear"
)


def _seal_value(
    value: Any, pointer: str, stored: Mapping[str, str], keyring: Keyring | None, tenant: str, task_id: str
) -> str:
    if value == MARKER:
        kept = stored.get(pointer)
        if kept is None:
            raise SecretError(
                pointer, f'"{MARKER}" keeps the stored secret, but the task has none here; send the value'
            )
        return kept
    if is_token(value):
        if stored.get(pointer) == value:
            return str(value)
        raise SecretError(pointer, f'send the clear value (or "{MARKER}" to keep the stored one), not an encrypted one')
    if keyring is None:
        raise SecretError(pointer, NO_KEY)
    return keyring.encrypt(value, tenant=tenant, task_id=task_id, pointer=pointer)


def seal_definition(
    definition: TaskDefinition,
    *,
    keyring: Keyring | None,
    tenant: str,
    task_id: str,
    stored: Mapping[str, Any] | None = None,
) -> TaskDefinition:
    """``definition`` with every sensitive value encrypted for ``task_id`` of ``tenant``.

    ``stored`` is the task's current definition (as the views hold it) on an update: a
    :data:`MARKER` at a sensitive place keeps the token stored there, and a token is accepted
    only where the same token is stored (nobody is shown tokens, so any other one was copied).

    :raises SecretError: a marker with nothing to keep, a foreign token, or no keyring.
    """
    doc = definition.model_dump(mode="python")
    seal_places(doc, sensitive_places(doc), keyring=keyring, tenant=tenant, subject=task_id, stored=stored)
    return TaskDefinition.model_validate(doc)


def seal_places(
    doc: dict[str, Any],
    places: Iterable[str],
    *,
    keyring: Keyring | None,
    tenant: str,
    subject: str,
    stored: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``doc`` (changed in place) with the values at ``places`` encrypted for ``subject`` of
    ``tenant``, as :func:`seal_definition` does for a task (markers keep what ``stored`` holds
    at the same place; a token only where ``stored`` has the same). For documents that are not
    task definitions, e.g. a tenant's notification rules.

    :raises SecretError: a marker with nothing to keep, a foreign token, or no keyring.
    """
    kept = tokens(stored or {})
    wanted = list(places)
    for pointer in wanted:
        _, value = _get(doc, pointer)
        _set(doc, pointer, _seal_value(value, pointer, kept, keyring, tenant, subject))
    for pointer in tokens(doc):
        if pointer not in wanted:
            raise SecretError(pointer, "encrypted values are accepted only in sensitive fields")
    return doc


def seal_params(
    params: Mapping[str, Any], sensitive: Iterable[str], *, keyring: Keyring | None, tenant: str, task_id: str
) -> dict[str, Any]:
    """Trigger-time ``params`` with the values at the task's ``sensitive`` pointers encrypted.

    They are merged over the definition's params, so they are bound to ``/params<pointer>``.
    A marker or a token is refused: leave a param out to use the task's own value.

    :raises SecretError: a marker or token in the params, or no keyring.
    """
    doc: dict[str, Any] = {"params": dict(orjson.loads(orjson.dumps(params)))}
    places = [f"/params{p}" for p in sensitive if _get(doc, f"/params{p}")[0]]
    for pointer in places:
        _, value = _get(doc, pointer)
        if value == MARKER or is_token(value):
            raise SecretError(pointer, "send the value, or leave the param out to use the task's own")
        if keyring is None:
            raise SecretError(pointer, NO_KEY)
        _set(doc, pointer, keyring.encrypt(value, tenant=tenant, task_id=task_id, pointer=pointer))
    for pointer in tokens(doc):
        if pointer not in places:
            raise SecretError(pointer, "encrypted values are accepted only in sensitive fields")
    params_out: dict[str, Any] = doc["params"]
    return params_out


def open_work(
    work: Work,
    params: Mapping[str, Any],
    *,
    keyring: Keyring | None,
    tenant: str,
    task_id: str,
    accept_clear: bool = False,
) -> tuple[Work, dict[str, Any], list[str]]:
    """Decrypt every token in a dispatched ``work`` and ``params``: ``(work, params, clear values)``.

    The clear values are returned so that they can be scrubbed from results and errors. A
    default-sensitive header held in clear is refused (it was produced without encryption)
    unless ``accept_clear`` (a migration of tasks created before encryption).

    :raises SecretError: a token that does not decrypt here, no keyring, or a clear auth header.
    """
    if isinstance(work, HttpWork) and not accept_clear:
        places = zip(HEADER_PLACES, (work, work.poll, work.cancel), strict=True)
        for base, holder in places:
            for name, value in (holder.headers if holder is not None else {}).items():
                if name.lower() in SENSITIVE_HEADERS and not is_token(value):
                    raise SecretError(
                        f"{base}/{escape(name)}",
                        "sensitive header sent in clear; encrypt it (schemas.secrets) before producing the command",
                    )
    if not _any_token(work) and not _any_token(params):
        return work, dict(params), []  # the common case, without dumping the work
    doc: dict[str, Any] = {"work": work.model_dump(mode="python"), "params": dict(params)}
    found_tokens = tokens(doc)
    if keyring is None:
        raise SecretError(next(iter(found_tokens)), "this executor has no secret keys (SCHED_SECRET_KEYS)")
    clears: list[str] = []
    for pointer, tok in found_tokens.items():
        value = keyring.decrypt(tok, tenant=tenant, task_id=task_id, pointer=pointer)
        _set(doc, pointer, value)
        clears.extend(_clear_strings(value))
    try:
        opened = type(work).model_validate(doc["work"])
    except ValidationError:
        # Not the validation message: it would quote the clear value.
        raise SecretError("/work", "a decrypted value does not fit its field") from None
    return opened, doc["params"], clears


def _any_token(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(TOKEN_PREFIX)
    if isinstance(value, BaseModel):
        return any(_any_token(v) for _, v in value)
    if isinstance(value, Mapping):
        return any(_any_token(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_any_token(v) for v in value)
    return False


def _clear_strings(value: Any) -> list[str]:
    """The strings a clear value could be echoed as (a header's credentials after its scheme too)."""
    if isinstance(value, str):
        out = [value]
        _scheme, _, credentials = value.partition(" ")
        if credentials.strip():
            out.append(credentials.strip())
        return [s for s in out if len(s) >= _MIN_SCRUB]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _clear_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _clear_strings(v)]
    return [] if value is None or isinstance(value, bool) else _clear_strings(str(value))


def scrub(value: Any, clears: Iterable[str]) -> Any:
    """``value`` (a result or an error) with every occurrence of a clear value replaced by the marker."""
    ordered = sorted(set(clears), key=len, reverse=True)
    if not ordered:
        return value
    if isinstance(value, str):
        text: str = value
        for clear in ordered:
            text = text.replace(clear, MARKER)
        return text
    if isinstance(value, Mapping):
        return {scrub(k, ordered): scrub(v, ordered) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, ordered) for v in value]
    return value
