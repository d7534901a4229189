"""Event triggers without a broker: rule matching, CloudEvent validation, and the router's
routing part (dedup, tenancy, debounce, what may be committed), as tables of values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from schemas.commands import CreateTask
from schemas.envelope import command_envelope, decode_command, encode
from schemas.errors import DecodeError
from schemas.specs import TOLERANT, TaskDefinition
from schemas.triggers import (
    CloudEvent,
    TaskRules,
    TriggerRule,
    cloudevent_of,
    decode_cloudevent,
    trigger_id,
    trigger_params,
)
from streams.settings import Settings
from streams.triggers import Routing, RulesIndex, Seen

TP = TopicPartition("p.triggers", 0)


def event(**attributes: Any) -> CloudEvent:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/ci/builds",
        "type": "com.acme.build.finished",
        "tenant": "acme",
        "subject": "build-42",
        "data": {"status": "passed", "build": {"branch": "main", "number": 7}, "flag": True, "n": 1},
    }
    return CloudEvent.model_validate({**base, **attributes})


def rule(**fields: Any) -> TriggerRule:
    return TriggerRule.model_validate({"type": "com.acme.build.finished", **fields})


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "matches"),
    [
        ({}, True),
        ({"type": "com.acme.build.started"}, False),
        ({"type": {"prefix": "com.acme.build."}}, True),
        ({"type": {"prefix": "com.acme.deploy."}}, False),
        ({"type": {"exact": "com.acme.build"}}, False),  # exact is not a prefix
        ({"source": "/ci/builds"}, True),
        ({"source": "/ci"}, False),
        ({"source": {"prefix": "/ci/"}}, True),
        ({"subject": "build-42"}, True),
        ({"subject": {"prefix": "build-4"}}, True),
        ({"subject": "build-43"}, False),
        ({"conditions": [{"pointer": "/status", "eq": "passed"}]}, True),
        ({"conditions": [{"pointer": "/status", "eq": "failed"}]}, False),
        ({"conditions": [{"pointer": "/build/branch", "in": ["main", "release"]}]}, True),
        ({"conditions": [{"pointer": "/build/branch", "in": ["dev"]}]}, False),
        ({"conditions": [{"pointer": "/build/number", "eq": 7.0}]}, True),  # JSON numbers by value
        ({"conditions": [{"pointer": "/flag", "eq": 1}]}, False),  # true is not 1
        ({"conditions": [{"pointer": "/n", "eq": True}]}, False),  # 1 is not true
        ({"conditions": [{"pointer": "/build", "exists": True}]}, True),
        ({"conditions": [{"pointer": "/missing", "exists": False}]}, True),
        ({"conditions": [{"pointer": "/missing", "exists": True}]}, False),
        ({"conditions": [{"pointer": "/missing", "eq": None}]}, False),  # absent is not null
        ({"conditions": [{"pointer": "/status", "eq": "passed"}, {"pointer": "/n", "eq": 2}]}, False),  # all hold
    ],
)
def test_rule_matching(fields: dict[str, Any], matches: bool) -> None:
    assert rule(**fields).matches(event()) is matches


def test_an_event_without_subject_matches_only_rules_without_one() -> None:
    bare = event(subject=None)
    assert rule().matches(bare)
    assert not rule(subject={"prefix": "b"}).matches(bare)


def test_a_condition_on_null_data_and_on_arrays() -> None:
    assert rule(conditions=[{"pointer": "/items/1", "eq": "b"}]).matches(event(data={"items": ["a", "b"]}))
    assert not rule(conditions=[{"pointer": "/items/2", "exists": True}]).matches(event(data={"items": ["a"]}))
    assert not rule(conditions=[{"pointer": "/status", "eq": "x"}]).matches(event(data=None))
    assert rule(conditions=[{"pointer": "/a~1b", "eq": 1}]).matches(event(data={"a/b": 1}))


@pytest.mark.parametrize(
    ("fields", "loc", "fragment"),
    [
        ({"typo": 1}, ("typo",), "Extra inputs"),
        ({"type": {"exact": "a", "prefix": "b"}}, ("type",), "exactly one of 'exact' and 'prefix'"),
        ({"type": {}}, ("type",), "exactly one of 'exact' and 'prefix'"),
        ({"source": {"regex": ".*"}}, ("source", "regex"), "Extra inputs"),
        ({"conditions": [{"pointer": "status", "eq": 1}]}, ("conditions", 0, "pointer"), "JSON pointer"),
        ({"conditions": [{"pointer": "/s"}]}, ("conditions", 0), "exactly one of 'eq', 'in' and 'exists'"),
        ({"conditions": [{"pointer": "/s", "eq": 1, "in": [1]}]}, ("conditions", 0), "exactly one"),
        ({"conditions": [{"pointer": "/s", "gt": 1}]}, ("conditions", 0, "gt"), "Extra inputs"),
        ({"conditions": [{"pointer": "/s", "in": []}]}, ("conditions", 0, "in"), "at least 1"),
        ({"conditions": [{"pointer": "/s", "exists": True}] * 11}, ("conditions",), "at most 10"),
        ({"debounce_seconds": 0}, ("debounce_seconds",), "greater than 0"),
        ({"debounce_seconds": 7200}, ("debounce_seconds",), "less than or equal to 3600"),
        ({"params_key": "a.b"}, ("params_key",), "params_key must be"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(fields: dict[str, Any], loc: tuple[Any, ...], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        rule(**fields)
    (error,) = info.value.errors()
    assert error["loc"] == loc
    assert fragment in error["msg"]


def test_a_definition_refuses_an_unknown_rule_field_naming_it() -> None:
    with pytest.raises(ValidationError) as info:
        TaskDefinition.model_validate(
            {"name": "t", "work": {"kind": "handler", "name": "h"}, "triggers": [{"type": "x", "sorce": "/a"}]}
        )
    assert [e["loc"] for e in info.value.errors()] == [("triggers", 0, "sorce")]


def test_rules_survive_the_wire_and_the_stored_state() -> None:
    """Only the operator given is written: an unset ``eq`` written as null would read back as ``eq: null``."""
    definition = TaskDefinition.model_validate(
        {
            "name": "t",
            "work": {"kind": "handler", "name": "h"},
            "triggers": [
                {
                    "type": {"prefix": "com."},
                    "conditions": [
                        {"pointer": "/a", "in": [1, 2]},
                        {"pointer": "/b", "eq": None},
                        {"pointer": "/c", "exists": False},
                    ],
                    "debounce_seconds": 5,
                }
            ],
        }
    )
    dumped = definition.model_dump(mode="json")["triggers"][0]["conditions"]
    assert dumped == [
        {"pointer": "/a", "in": [1, 2]},
        {"pointer": "/b", "eq": None},
        {"pointer": "/c", "exists": False},
    ]
    command = CreateTask(
        command_id="c", task_id="acme/t", tenant="acme", actor="a", at=datetime.now(UTC), definition=definition
    )
    decoded = decode_command(encode(command_envelope(command, source="tests")))
    assert isinstance(decoded, CreateTask) and decoded.definition == definition
    rules = definition.triggers[0]
    assert rules.conditions[1].holds({"b": None}) and not rules.conditions[1].holds({"b": 0})


# ---------------------------------------------------------------------------------------------
# CloudEvents
# ---------------------------------------------------------------------------------------------

VALID: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "tenant": "acme"}


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"specversion": None}, "specversion", "missing"),
        ({"id": None}, "id", "missing"),
        ({"source": None}, "source", "missing"),
        ({"type": None}, "type", "missing"),
        ({"tenant": None}, "tenant", "Field required"),
        ({"specversion": "0.3"}, "specversion", "'1.0'"),
        ({"id": ""}, "id", "at least 1"),
        ({"time": "yesterday"}, "time", "datetime"),
        ({"time": "2026-11-29T10:00:00"}, "time", "timezone-aware"),
        ({"datacontenttype": "text/plain"}, "datacontenttype", "only JSON data"),
        ({"data_base64": "aGk="}, "data_base64", "not supported"),
        ({"Bad-Name": "x"}, "Bad-Name", "not a CloudEvents attribute"),
        ({"traceparent": {"a": 1}}, "traceparent", "string, number or boolean"),
        ({"data": {"a.b": 1}}, "data", "cannot be stored"),
        ({"data": {"$where": 1}}, "data", "cannot be stored"),
        ({"data": {"n": 2**70}}, "data/n", "64 bits"),
        ({"data": {"x": float("nan")}}, "data/x", "finite"),
        ({"data": {"x": "\ud800"}}, "data/x", "Unicode"),
        ({"data": [[1]]}, "data/0", "array"),
    ],
)
def test_invalid_cloudevents_name_the_attribute(change: dict[str, Any], field: str, fragment: str) -> None:
    obj = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with pytest.raises(DecodeError) as info:
        cloudevent_of(obj)
    assert info.value.field == field, info.value
    assert fragment in info.value.reason


def test_extension_attributes_are_kept() -> None:
    got = cloudevent_of({**VALID, "traceparent": "00-abc", "priority": 3})
    assert got.model_extra == {"traceparent": "00-abc", "priority": 3}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(b"not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "not valid JSON"), (None, "JSON")],
)
def test_a_value_that_is_not_a_cloudevent(value: bytes | None, fragment: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_cloudevent(value)
    assert fragment in str(info.value)


def test_binary_mode_reads_ce_headers() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"42"),
        ("ce_source", b"/s"),
        ("ce_type", b"t"),
        ("ce_tenant", b"acme"),
        ("ce_subject", b"sub"),
        ("content-type", b"application/json; charset=utf-8"),
        ("traceparent", b"ignored: not a ce_ header"),
    ]
    got = decode_cloudevent(b'{"k": [1]}', headers)
    assert (got.id, got.source, got.type, got.tenant, got.subject, got.data) == (
        "42",
        "/s",
        "t",
        "acme",
        "sub",
        {"k": [1]},
    )
    assert decode_cloudevent(None, headers).data is None
    with pytest.raises(DecodeError) as info:
        decode_cloudevent(b"<xml/>", [*headers[:5], ("content-type", b"application/xml")])
    assert info.value.field == "datacontenttype"
    with pytest.raises(DecodeError) as info:
        decode_cloudevent(b"{", headers)
    assert info.value.field == "data"
    with pytest.raises(DecodeError) as info:
        decode_cloudevent(b"{}", [h for h in headers if h[0] != "ce_source"])
    assert info.value.field == "source"


# ---------------------------------------------------------------------------------------------
# Params and ids
# ---------------------------------------------------------------------------------------------


def test_trigger_ids_are_per_task_source_and_id() -> None:
    e = event()
    assert trigger_id("acme/a", e) == trigger_id("acme/a", event())
    assert trigger_id("acme/a", e) != trigger_id("acme/b", e)
    assert trigger_id("acme/a", e) != trigger_id("acme/a", event(id="e-2"))
    assert trigger_id("acme/a", e) != trigger_id("acme/a", event(source="/other"))
    assert trigger_id("acme/a", e) != trigger_id("acme/a", e, window=True)


def test_debounced_params_are_bounded_by_count_and_bytes() -> None:
    events = [event(id=str(i), data={"blob": "x" * 1000}) for i in range(50)]
    params = trigger_params(rule(debounce_seconds=1, debounce_max_events=30), events, debounced=True)
    assert len(params["event"]) == 30 and params["event_count"] == 50
    params = trigger_params(rule(debounce_seconds=1), events, debounced=True, max_bytes=10_000)
    assert 1 <= len(params["event"]) < 10 and params["event_count"] == 50
    assert len(orjson.dumps(params["event"])) <= 10_000


# ---------------------------------------------------------------------------------------------
# The router's routing part
# ---------------------------------------------------------------------------------------------


def index_with(*tasks: tuple[str, str, list[dict[str, Any]]]) -> RulesIndex:
    index = RulesIndex()
    for task_id, tenant, rules in tasks:
        value = TaskRules(
            task_id=task_id, tenant=tenant, sequence=1, rules=[TriggerRule.model_validate(r) for r in rules]
        )
        index.apply(task_id.encode(), value.model_dump_json().encode())
    return index


def raw(**attributes: Any) -> bytes:
    return orjson.dumps(event(**attributes).model_dump(mode="json", exclude_none=True))


RULE = {"type": "com.acme.build.finished"}


def routing(index: RulesIndex, **settings: Any) -> Routing:
    return Routing(Settings(**settings), index)


def test_a_matching_event_becomes_one_trigger_per_task_of_its_tenant_only() -> None:
    r = routing(
        index_with(("acme/a", "acme", [RULE, RULE]), ("acme/b", "acme", [RULE]), ("globex/c", "globex", [RULE]))
    )
    routed = r.record(TP, 0, 100.0, raw(), [], now=100.0)
    assert sorted(c.task_id for c in routed.commands) == ["acme/a", "acme/b"]  # one each, though a has two rules
    assert {c.tenant for c in routed.commands} == {"acme"}
    assert routed.commands[0].params == {"event": event().summary()}
    assert routed.commands[0].trigger_id == trigger_id(routed.commands[0].task_id, event())
    assert r.stats.matched == 1
    assert r.record(TP, 1, 100.0, raw(id="2", tenant="initech"), [], now=100.0).commands == []
    assert r.stats.unmatched == 1


def test_the_same_source_and_id_routes_once_within_the_dedup_window() -> None:
    r = routing(index_with(("acme/a", "acme", [RULE])), trigger_dedup_seconds=60)
    assert len(r.record(TP, 0, 0, raw(), [], now=1000.0).commands) == 1
    assert r.record(TP, 1, 0, raw(), [], now=1030.0).commands == []
    assert r.stats.deduplicated == 1
    # Another tenant's event with the same source and id is another event.
    r.index.apply(
        b"globex/x",
        TaskRules(task_id="globex/x", tenant="globex", sequence=1, rules=[rule()]).model_dump_json().encode(),
    )
    assert len(r.record(TP, 2, 0, raw(tenant="globex"), [], now=1031.0).commands) == 1
    # After the window, the task processor's memory of trigger ids is what remains.
    again = r.record(TP, 3, 0, raw(), [], now=1061.0).commands
    assert len(again) == 1 and again[0].trigger_id == trigger_id("acme/a", event())


def test_seen_is_bounded() -> None:
    seen = Seen(window=60, limit=2)
    assert seen.add("a", 0) and seen.add("b", 0) and seen.add("c", 0)
    assert len(seen) == 2 and seen.add("a", 1)  # the oldest was forgotten


def test_invalid_and_too_large_events_are_reported_not_routed() -> None:
    r = routing(index_with(("acme/a", "acme", [RULE])), trigger_max_event_bytes=1024)
    routed = r.record(TP, 0, 0, b"{}", [], now=0)
    assert routed.invalid is not None and routed.invalid.field == "specversion"
    big = r.record(TP, 1, 0, raw(data={"x": "y" * 2000}), [], now=0)
    assert big.invalid is not None and "larger than 1024 bytes" in str(big.invalid)
    assert r.stats.invalid == 2 and r.committable() == {TP: OffsetAndMetadata(2, "v1:2")}


def test_rules_follow_updates_and_tombstones() -> None:
    index = index_with(("acme/a", "acme", [RULE]))
    index.apply(
        b"acme/a",
        TaskRules(task_id="acme/a", tenant="acme", sequence=2, rules=[rule(type="other")]).model_dump_json().encode(),
    )
    assert [r.type.exact for r in index.tasks("acme")["acme/a"]] == ["other"]
    index.apply(b"acme/a", None)
    assert index.tasks("acme") == {} and len(index) == 0
    with pytest.raises(DecodeError):
        index.apply(b"acme/a", b"{}")


def test_debounce_batches_a_window_and_holds_its_offsets() -> None:
    r = routing(index_with(("acme/a", "acme", [{**RULE, "debounce_seconds": 10}])))
    other = TopicPartition("p.triggers", 1)
    assert r.record(TP, 5, 100.0, raw(id="1"), [], now=100.2).commands == []
    assert r.record(other, 9, 103.0, raw(id="2"), [], now=103.0).commands == []
    assert r.record(TP, 6, 104.0, raw(id="3"), [], now=104.0).commands == []
    # Nothing at or after the window's first record on each partition is committed while it is
    # open; the metadata says how far it routed.
    assert r.committable() == {TP: OffsetAndMetadata(5, "v1:7"), other: OffsetAndMetadata(9, "v1:10")}
    assert r.next_close() == 110.0
    assert r.due(109.9) == []
    (run,) = r.due(110.0)
    assert [e["id"] for e in run.params["event"]] == ["1", "2", "3"] and run.params["event_count"] == 3
    assert run.trigger_id == trigger_id("acme/a", event(id="1"), window=True)
    assert r.committable() == {TP: OffsetAndMetadata(7, "v1:7"), other: OffsetAndMetadata(10, "v1:10")}
    # The next event opens a new window.
    r.record(TP, 7, 111.0, raw(id="4"), [], now=111.0)
    assert r.next_close() == 121.0


def test_a_window_replayed_after_a_restart_runs_with_the_same_trigger_id() -> None:
    """The commit stopped at the window's first record: the next owner reads its events again
    (their record timestamps are old, so the window closes at once) and sends the same run,
    but not again the runs of events it had routed to undebounced rules."""
    rules = [{**RULE, "debounce_seconds": 10}]
    index = index_with(("acme/a", "acme", rules), ("acme/now", "acme", [RULE]))
    first = routing(index)
    assert len(first.record(TP, 5, 100.0, raw(id="1"), [], now=100.0).commands) == 1  # acme/now
    assert len(first.record(TP, 6, 101.0, raw(id="2"), [], now=101.0).commands) == 1
    commit = first.committable()[TP]
    assert commit == OffsetAndMetadata(5, "v1:7")
    second = routing(index)
    assert second.resume(TP, commit) == 7
    assert second.record(TP, 5, 100.0, raw(id="1"), [], now=500.0).commands == []  # routed before
    assert second.record(TP, 6, 101.0, raw(id="2"), [], now=500.0).commands == []
    (after,) = second.due(500.0)
    (before,) = first.due(111.0)
    assert after.trigger_id == before.trigger_id and after.params == before.params
    fresh = second.record(TP, 7, 102.0, raw(id="3"), [], now=500.0).commands
    assert [c.task_id for c in fresh] == ["acme/now"]
    assert second.committable()[TP] == OffsetAndMetadata(7, "v1:8")  # the window of "3" holds it


@pytest.mark.parametrize(
    ("commit", "routed"),
    [
        (None, None),
        (OffsetAndMetadata(-1, ""), None),
        (OffsetAndMetadata(5, ""), 5),  # no metadata: everything after the offset routes again
        (OffsetAndMetadata(5, "garbage"), 5),
        (OffsetAndMetadata(5, "v1:9"), 9),
        (OffsetAndMetadata(5, "v1:3"), 5),
    ],
)
def test_resume_reads_how_far_the_last_owner_routed(commit: OffsetAndMetadata | None, routed: int | None) -> None:
    assert routing(RulesIndex()).resume(TP, commit) == routed


def test_remembered_events_are_deduplicated() -> None:
    r = routing(index_with(("acme/a", "acme", [RULE])))
    assert r.remember(raw(id="old"), [], 90.0) and not r.remember(b"junk", [], 90.0)
    assert r.record(TP, 0, 100.0, raw(id="old"), [], now=100.0).commands == []
    assert r.stats.deduplicated == 1


def test_forget_drops_the_windows_of_revoked_partitions() -> None:
    r = routing(index_with(("acme/a", "acme", [{**RULE, "debounce_seconds": 10}])))
    r.record(TP, 5, 100.0, raw(id="1"), [], now=100.0)
    r.forget([TP])
    assert r.windows == {} and r.committable() == {} and r.due(1e9) == []


def test_the_index_offers_only_tasks_with_a_rule_on_the_type_or_a_prefix() -> None:
    index = index_with(
        ("acme/a", "acme", [{"type": "build.done"}]),
        ("acme/b", "acme", [{"type": "deploy.done"}, {"type": {"prefix": "build."}}]),
        ("acme/c", "acme", [{"type": "deploy.done"}]),
        ("globex/d", "globex", [{"type": "build.done"}]),
    )
    assert [t for t, _ in index.candidates("acme", "build.done")] == ["acme/a", "acme/b"]
    assert [t for t, _ in index.candidates("acme", "deploy.done")] == ["acme/b", "acme/c"]
    assert [t for t, _ in index.candidates("acme", "other")] == ["acme/b"]  # its prefix rule may match
    assert index.candidates("initech", "build.done") == []
    # An update moves the task to its new types; a tombstone removes it.
    new = TaskRules(task_id="acme/a", tenant="acme", sequence=2, rules=[rule(type="deploy.done")])
    index.apply(b"acme/a", new.model_dump_json().encode())
    assert [t for t, _ in index.candidates("acme", "build.done")] == ["acme/b"]
    assert [t for t, _ in index.candidates("acme", "deploy.done")] == ["acme/a", "acme/b", "acme/c"]
    index.apply(b"acme/b", None)
    assert [t for t, _ in index.candidates("acme", "other")] == []
    assert [t for t, _ in index.candidates("acme", "deploy.done")] == ["acme/a", "acme/c"]


@pytest.mark.parametrize(
    ("sensitive", "rule"),
    [
        (["/token"], {"type": "x", "params_key": "token"}),
        (["/token/inner"], {"type": "x", "params_key": "token"}),
        (["/event_count"], {"type": "x", "debounce_seconds": 5}),
    ],
)
def test_a_rule_may_not_put_the_event_under_a_sensitive_param(sensitive: list[str], rule: dict[str, Any]) -> None:
    body = {"name": "t", "work": {"kind": "handler", "name": "noop"}, "sensitive_params": sensitive, "triggers": [rule]}
    with pytest.raises(ValidationError, match=r"triggers\.0\.params_key"):
        TaskDefinition.model_validate(body)
    # Stored definitions accepted before the rule stay readable.
    assert TaskDefinition.model_validate(body, context=TOLERANT).triggers[0].params_key == rule.get(
        "params_key", "event"
    )
    # Elsewhere the event goes: fine.
    assert TaskDefinition.model_validate({**body, "sensitive_params": ["/other"]}).triggers


@pytest.mark.parametrize(
    ("key", "task_id", "tenant"),
    [
        (b"", "", "acme"),  # no task id: no command can carry it
        (b"acme/" + b"x" * 300, "acme/" + "x" * 300, "acme"),  # longer than a task id
        (b"globex/x", "globex/x", "acme"),  # another tenant's task under acme's rules
        (b"acme/a", "acme/b", "acme"),  # rules of another task
    ],
)
def test_a_poison_record_on_trigger_rules_is_refused_and_routing_goes_on(key: bytes, task_id: str, tenant: str) -> None:
    index = index_with(("acme/ok", "acme", [RULE]))
    value = TaskRules(task_id=task_id, tenant=tenant, sequence=1, rules=[TriggerRule.model_validate(RULE)])
    with pytest.raises(DecodeError) as info:
        index.apply(key, value.model_dump_json().encode())
    assert info.value.field == "key"
    assert len(index) == 1
    # acme's events still route, to acme's own task only (this raised while building the
    # command, and the router crashed on the same record after every restart).
    routed = routing(index).record(TP, 0, 0, raw(), [], now=0)
    assert [c.task_id for c in routed.commands] == ["acme/ok"] and routed.invalid is None


def test_a_record_that_cannot_be_routed_is_reported_and_the_next_one_routes() -> None:
    # Whatever slips into the index (here a task id no command can carry, put there directly),
    # building the commands raised out of the router's loop: it stopped on the record, and its
    # successor stopped on it again.
    index = index_with(("acme/ok", "acme", [RULE]))
    index._by_tenant["acme"].add("", [TriggerRule.model_validate(RULE)])
    r = routing(index)
    routed = r.record(TP, 0, 0, raw(id="1"), [], now=0)
    assert routed.commands == [] and routed.invalid is not None and "could not be routed" in str(routed.invalid)
    assert r.committable() == {TP: OffsetAndMetadata(1, "v1:1")}  # the record is passed
    del index._by_tenant["acme"].rules[""]
    index._by_tenant["acme"].by_type[RULE["type"]].discard("")
    assert [c.task_id for c in r.record(TP, 1, 0, raw(id="2"), [], now=0).commands] == ["acme/ok"]


def test_a_debounce_window_keeps_only_what_its_run_carries_however_many_events_it_counts() -> None:
    # Every event of an open window was kept until it closed: a flood within an hour's window
    # grew the router without bound, and a router that ran out of memory rebuilt the same
    # window from the held offset after its restart, and ran out again.
    r = routing(index_with(("acme/a", "acme", [{**RULE, "debounce_seconds": 3600, "debounce_max_events": 3}])))
    for i in range(1000):
        r.record(TP, i, 100.0, raw(id=str(i), data={"x": "y" * 1000}), [], now=100.0)
    (window,) = r.windows.values()
    assert len(window.events) == 3 and window.count == 1000
    (run,) = r.due(3700.0)
    assert [e["id"] for e in run.params["event"]] == ["0", "1", "2"] and run.params["event_count"] == 1000
    assert run.trigger_id == trigger_id("acme/a", event(id="0"), window=True)
