"""Encryption of sensitive task fields (``schemas/secrets.py``): tokens, keys, sealing, opening."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from projections.folds import TaskFacts, audit_doc, evolve_task, secret_changes
from schemas.events import TaskCreated, TaskUpdated
from schemas.secrets import (
    MARKER,
    KeyConfigError,
    Keyring,
    SecretError,
    is_token,
    load_keyring,
    new_key,
    open_work,
    redact,
    scrub,
    seal_definition,
    seal_params,
    secret_ids,
    tokens,
)
from schemas.specs import HttpWork, TaskDefinition
from streams.settings import Settings

T0 = "2026-01-01T00:00:00Z"
TENANT, TASK = "acme", "acme/t1"
AUTH = "/work/headers/Authorization"


def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def ring() -> Keyring:
    return Keyring({"k1": key()})


def where(**kw: str) -> dict[str, str]:
    return {"tenant": TENANT, "task_id": TASK, "pointer": AUTH, **kw}


# --- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Bearer abc", "", {"user": "u", "n": [1, 2.5, None, True]}, 42])
def test_round_trip_of_any_json_value(ring: Keyring, value: Any) -> None:
    token = ring.encrypt(value, **where())
    assert token.startswith("enc:v1:k1:") and is_token(token)
    assert ring.decrypt(token, **where()) == value


def test_same_value_gives_different_tokens(ring: Keyring) -> None:
    assert ring.encrypt("x", **where()) != ring.encrypt("x", **where())


@pytest.mark.parametrize(
    "other",
    [{"tenant": "evil"}, {"task_id": "acme/t2"}, {"pointer": "/work/headers/Cookie"}, {"pointer": "/params/x"}],
)
def test_a_token_only_decrypts_for_its_tenant_task_and_field(ring: Keyring, other: dict[str, str]) -> None:
    token = ring.encrypt("Bearer abc", **where())
    with pytest.raises(SecretError, match="another tenant, task or field"):
        ring.decrypt(token, **where(**other))


def test_unknown_key_id_is_named(ring: Keyring) -> None:
    token = Keyring({"old": key()}).encrypt("v", **where())
    with pytest.raises(SecretError, match="'old'"):
        ring.decrypt(token, **where())


@pytest.mark.parametrize("position", [0, 11, 12, -17, -1])
def test_tampering_fails(ring: Keyring, position: int) -> None:
    # Flip one bit of the sealed bytes (nonce, ciphertext or tag), not one base64 character:
    # the last character of unpadded base64 carries bits a decoder ignores.
    token = ring.encrypt("Bearer abc", **where())
    head, _, data = token.rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[position] ^= 0x01
    tampered = f"{head}:{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    with pytest.raises(SecretError):
        ring.decrypt(tampered, **where())


@pytest.mark.parametrize("bad", ["enc:v1:k1:", "enc:v1:k1:!!!!", "enc:v1:k1:AAAA", "plain"])
def test_malformed_tokens_fail_cleanly(ring: Keyring, bad: str) -> None:
    with pytest.raises(SecretError):
        ring.decrypt(bad, **where())


def test_rotation_old_tokens_decrypt_after_the_active_key_changes() -> None:
    k1, k2 = key(), key()
    before = Keyring({"k1": k1})
    old = before.encrypt("Bearer old", **where())
    after = Keyring({"k1": k1, "k2": k2}, active="k2")
    assert after.decrypt(old, **where()) == "Bearer old"
    new = after.encrypt("Bearer new", **where())
    assert new.startswith("enc:v1:k2:")
    # Once k1 is dropped, its tokens no longer open: they must have been replaced first.
    with pytest.raises(SecretError, match="'k1'"):
        Keyring({"k2": k2}).decrypt(old, **where())


# --- keys ---------------------------------------------------------------------------------------


def test_keys_from_file_and_environment(tmp_path: Path) -> None:
    a, b = new_key(), new_key()
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"file-key": b}))
    ring = load_keyring({"env-key": a}, path, "file-key")
    assert ring is not None and ring.kids == ["env-key", "file-key"] and ring.active == "file-key"
    assert load_keyring({}, None, None) is None


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        ({"k": "not base64!"}, None, "not base64"),
        ({"k": base64.b64encode(b"short").decode()}, None, "32 bytes"),
        ({"a": new_key(), "b": new_key()}, None, "name the active one"),
        ({"a": new_key()}, "zz", "'zz' is not among"),
        ({}, "zz", "no keys are configured"),
        ({"bad:id": new_key()}, None, "letters, digits"),
    ],
)
def test_unusable_keys_are_refused_with_the_reason(keys: dict[str, str], active: str | None, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message):
        load_keyring(keys, None, active)


def test_settings_read_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHED_SECRET_KEYS", json.dumps({"k9": new_key()}))
    ring = Settings().secret_keyring()
    assert ring is not None and ring.active == "k9"
    monkeypatch.setenv("SCHED_SECRET_KEYS", json.dumps({"k9": "bad"}))
    settings = Settings()  # the settings load; the keyring (built at start) names the problem
    with pytest.raises(KeyConfigError, match="k9"):
        settings.secret_keyring()
    assert "bad" not in repr(settings)


# --- sealing (what the API does) ----------------------------------------------------------------


def http_definition(**work: Any) -> TaskDefinition:
    body: dict[str, Any] = {"kind": "http", "url": "https://example.com/run", **work}
    return TaskDefinition.model_validate({"name": "t", "work": body})


def test_sensitive_headers_are_encrypted_in_any_case_and_others_are_not(ring: Keyring) -> None:
    definition = http_definition(
        headers={"authorization": "Bearer a", "COOKIE": "c=1", "X-Api-Key": "k", "X-Trace": "t", "X-Custom": "s"},
        poll={"status_url": "https://example.com/s/{job_id}", "headers": {"Proxy-Authorization": "Basic p"}},
        cancel={"url": "https://example.com/c", "headers": {"Authorization": "Bearer c"}},
        sensitive_headers=["x-custom"],
    )
    sealed = seal_definition(definition, keyring=ring, tenant=TENANT, task_id=TASK)
    assert isinstance(sealed.work, HttpWork) and sealed.work.poll and sealed.work.cancel
    found = tokens(sealed.model_dump())
    assert sorted(found) == [
        "/work/cancel/headers/Authorization",
        "/work/headers/COOKIE",
        "/work/headers/X-Api-Key",
        "/work/headers/X-Custom",
        "/work/headers/authorization",
        "/work/poll/headers/Proxy-Authorization",
    ]
    assert sealed.work.headers["X-Trace"] == "t"
    assert ring.decrypt(found["/work/headers/authorization"], **where(pointer="/work/headers/authorization")) == (
        "Bearer a"
    )


def test_sensitive_params_are_encrypted_in_params_and_handler_params(ring: Keyring) -> None:
    definition = TaskDefinition.model_validate(
        {
            "name": "t",
            "work": {"kind": "handler", "name": "noop", "params": {"db": {"password": "p1"}}},
            "params": {"token": "tk", "db": {"password": "p2", "host": "h"}, "plain": 1},
            "sensitive_params": ["/token", "/db/password", "/absent"],
        }
    )
    sealed = seal_definition(definition, keyring=ring, tenant=TENANT, task_id=TASK)
    assert sorted(tokens(sealed.model_dump())) == ["/params/db/password", "/params/token", "/work/params/db/password"]
    assert sealed.params["plain"] == 1 and sealed.params["db"]["host"] == "h"


def test_without_a_key_a_sensitive_value_is_refused_naming_it() -> None:
    with pytest.raises(SecretError, match="no encryption key") as caught:
        seal_definition(http_definition(headers={"Authorization": "x"}), keyring=None, tenant=TENANT, task_id=TASK)
    assert caught.value.pointer == AUTH
    # Nothing sensitive: no key needed.
    plain = http_definition(headers={"Accept": "x"})
    assert seal_definition(plain, keyring=None, tenant=TENANT, task_id=TASK) == plain


def test_the_marker_keeps_the_stored_secret_and_a_new_value_replaces_it(ring: Keyring) -> None:
    stored = seal_definition(http_definition(headers={"Authorization": "a"}), keyring=ring, tenant=TENANT, task_id=TASK)
    stored_doc = stored.model_dump()
    kept = seal_definition(
        http_definition(headers={"Authorization": MARKER}), keyring=ring, tenant=TENANT, task_id=TASK, stored=stored_doc
    )
    assert kept == stored
    changed = seal_definition(
        http_definition(headers={"Authorization": "b"}), keyring=ring, tenant=TENANT, task_id=TASK, stored=stored_doc
    )
    assert tokens(changed.model_dump())[AUTH] != tokens(stored_doc)[AUTH]


def test_the_marker_with_nothing_stored_is_refused(ring: Keyring) -> None:
    with pytest.raises(SecretError, match="the task has none here"):
        seal_definition(http_definition(headers={"Authorization": MARKER}), keyring=ring, tenant=TENANT, task_id=TASK)


def test_a_token_is_accepted_only_where_the_same_token_is_stored(ring: Keyring) -> None:
    foreign = Keyring({"k1": key()}).encrypt("x", **where(tenant="other", task_id="other/t"))
    with pytest.raises(SecretError, match="not an encrypted one"):
        seal_definition(http_definition(headers={"Authorization": foreign}), keyring=ring, tenant=TENANT, task_id=TASK)
    with pytest.raises(SecretError, match="only in sensitive fields"):
        seal_definition(http_definition(headers={"X-Other": foreign}), keyring=ring, tenant=TENANT, task_id=TASK)


def test_trigger_params_at_sensitive_pointers_are_encrypted_for_the_merged_place(ring: Keyring) -> None:
    params = seal_params({"token": "t2", "n": 1}, ["/token"], keyring=ring, tenant=TENANT, task_id=TASK)
    assert params["n"] == 1
    assert ring.decrypt(params["token"], **where(pointer="/params/token")) == "t2"
    for bad in (MARKER, params["token"]):
        with pytest.raises(SecretError, match="leave the param out"):
            seal_params({"token": bad}, ["/token"], keyring=ring, tenant=TENANT, task_id=TASK)
    with pytest.raises(SecretError, match="no encryption key"):
        seal_params({"token": "x"}, ["/token"], keyring=None, tenant=TENANT, task_id=TASK)


# --- opening (what the executor does) -----------------------------------------------------------


def test_the_executor_opens_every_token_and_returns_the_clear_values(ring: Keyring) -> None:
    definition = http_definition(headers={"Authorization": "Bearer s3cret-value", "Accept": "a"})
    sealed = seal_definition(definition, keyring=ring, tenant=TENANT, task_id=TASK)
    params = seal_params({"token": "param-secret"}, ["/token"], keyring=ring, tenant=TENANT, task_id=TASK)
    work, opened, clears = open_work(sealed.work, params, keyring=ring, tenant=TENANT, task_id=TASK)
    assert isinstance(work, HttpWork)
    assert work.headers == {"Authorization": "Bearer s3cret-value", "Accept": "a"}
    assert opened == {"token": "param-secret"}
    assert set(clears) == {"Bearer s3cret-value", "s3cret-value", "param-secret"}


def test_the_executor_refuses_what_it_cannot_open(ring: Keyring) -> None:
    sealed = seal_definition(http_definition(headers={"Authorization": "a"}), keyring=ring, tenant=TENANT, task_id=TASK)
    with pytest.raises(SecretError, match="another tenant"):  # copied into another tenant's task
        open_work(sealed.work, {}, keyring=ring, tenant="evil", task_id="evil/t1")
    with pytest.raises(SecretError, match="no secret keys"):
        open_work(sealed.work, {}, keyring=None, tenant=TENANT, task_id=TASK)
    clear = http_definition(headers={"Authorization": "Bearer in-clear"})
    with pytest.raises(SecretError, match="sent in clear"):
        open_work(clear.work, {}, keyring=ring, tenant=TENANT, task_id=TASK)
    # Migration of tasks created before encryption: accepted when the operator says so.
    work, _, clears = open_work(clear.work, {}, keyring=ring, tenant=TENANT, task_id=TASK, accept_clear=True)
    assert work == clear.work and clears == []


def test_scrub_and_redact() -> None:
    result = {"body": '{"auth": "Bearer abcd1234"}', "list": ["abcd1234"], "n": 1}
    assert scrub(result, ["Bearer abcd1234", "abcd1234"]) == {"body": '{"auth": "***"}', "list": ["***"], "n": 1}
    assert scrub("HTTP 500 from x", []) == "HTTP 500 from x"
    doc = {"h": {"Authorization": "enc:v1:k:AAAA"}, "l": ["enc:v1:k:BBBB", "x"], "n": None}
    assert redact(doc) == {"h": {"Authorization": MARKER}, "l": [MARKER, "x"], "n": None}


# --- the audit: which secrets were set, changed, kept or removed -------------------------------


def test_secret_changes_tell_set_changed_kept_and_removed(ring: Keyring) -> None:
    def sealed(headers: dict[str, str], stored: TaskDefinition | None = None) -> TaskDefinition:
        return seal_definition(
            http_definition(headers=headers),
            keyring=ring,
            tenant=TENANT,
            task_id=TASK,
            stored=stored.model_dump() if stored else None,
        )

    common = {"task_id": TASK, "tenant": TENANT, "at": T0, "causation_id": "c", "actor": "a", "revision": 1}
    first = sealed({"Authorization": "a", "Cookie": "c", "X-Api-Key": "k"})
    created = TaskCreated(event_id="e1", sequence=1, definition=first, **common)
    assert secret_changes(created, None) == [
        {"field": "/work/headers/Authorization", "change": "set"},
        {"field": "/work/headers/Cookie", "change": "set"},
        {"field": "/work/headers/X-Api-Key", "change": "set"},
    ]
    facts = TaskFacts(TENANT, "active", "http", 1, tuple(secret_ids(first).items()))
    second = sealed({"Authorization": MARKER, "Cookie": "new", "Proxy-Authorization": "p"}, first)
    updated = TaskUpdated(event_id="e2", sequence=2, definition=second, **common)
    assert secret_changes(updated, facts) == [
        {"field": "/work/headers/Authorization", "change": "kept"},
        {"field": "/work/headers/Cookie", "change": "changed"},
        {"field": "/work/headers/Proxy-Authorization", "change": "set"},
        {"field": "/work/headers/X-Api-Key", "change": "removed"},
    ]
    ahead = TaskFacts(TENANT, "active", "http", 5, ())
    assert secret_changes(updated, ahead)[0]["change"] == "unknown"


def test_views_and_audit_mask_a_clear_value_sent_straight_to_kafka(ring: Keyring) -> None:
    common = {"task_id": TASK, "tenant": TENANT, "at": T0, "causation_id": "c", "actor": "a", "revision": 1}
    sealed = seal_definition(http_definition(headers={"Cookie": "c"}), keyring=ring, tenant=TENANT, task_id=TASK)
    mixed = sealed.model_copy(
        update={"work": sealed.work.model_copy(update={"headers": {**sealed.work.headers, "Authorization": "clear"}})}
    )
    created = TaskCreated(event_id="e1", sequence=1, definition=mixed, **common)
    audit = audit_doc(created, 0, 0)
    task = evolve_task(None, created)
    assert task is not None
    for definition in (audit["body"]["definition"], task["definition"]):
        assert definition["work"]["headers"]["Authorization"] == MARKER
        assert is_token(definition["work"]["headers"]["Cookie"])


def test_a_decrypted_value_that_does_not_fit_fails_without_quoting_it(ring: Keyring) -> None:
    # A producer encrypted a JSON object where a header (a string) belongs.
    token = ring.encrypt({"nested": "v4lue-secret"}, **where())
    work = http_definition(headers={"Authorization": token}).work
    with pytest.raises(SecretError, match="does not fit") as caught:
        open_work(work, {}, keyring=ring, tenant=TENANT, task_id=TASK)
    assert "v4lue-secret" not in str(caught.value)


def test_a_key_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="secret key id"):
        Keyring({"k1\n": key()})
