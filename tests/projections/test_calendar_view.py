"""The calendars view and the worker's book settle on the highest revision of each calendar,
whatever order they read the topic in (the view against the real FerretDB)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from projections.calendars import COLLECTION, write_calendar_events
from schemas.calendars import Calendar, CalendarDeleted, CalendarUpserted
from streams.calendars import CalendarBook, calendar_event_id, decode_calendar_message, encode_calendar_event

AT = datetime(2026, 1, 1, tzinfo=UTC)


def upserted(revision: int, tenant: str = "acme", name: str = "hol", day: str = "2026-12-25") -> CalendarUpserted:
    return CalendarUpserted(
        event_id=calendar_event_id(tenant, name, revision, "r"),
        tenant=tenant,
        name=name,
        revision=revision,
        at=AT,
        actor="alice",
        calendar=Calendar(name=name, dates=[day]),
    )


def deleted(revision: int, tenant: str = "acme", name: str = "hol") -> CalendarDeleted:
    return CalendarDeleted(
        event_id=calendar_event_id(tenant, name, revision, "r"),
        tenant=tenant,
        name=name,
        revision=revision,
        at=AT,
        actor="a",
    )


def test_book_keeps_the_highest_revision_per_tenant_and_name() -> None:
    book = CalendarBook()
    assert book.apply(upserted(2, day="2026-12-26"))
    assert not book.apply(upserted(1))  # older: ignored
    assert not book.apply(upserted(2))  # the same revision again (a racing writer): the first wins
    assert [str(d) for d in book.of("acme")["hol"].dates] == ["2026-12-26"]
    assert book.apply(upserted(1, tenant="other"))
    assert set(book.of("other")) == {"hol"} and book.of("nobody") == {}
    assert book.apply(deleted(3))
    assert "hol" not in book.of("acme") and len(book) == 1
    assert not book.apply(upserted(3))
    assert book.apply(upserted(4))
    assert "hol" in book.of("acme")


def test_calendar_events_round_trip_through_their_envelope() -> None:
    for event in (upserted(1), deleted(2)):
        assert decode_calendar_message(encode_calendar_event(event, "/test")) == event


async def test_view_never_goes_back_to_an_older_revision(mongo_db: AsyncDatabase[Any]) -> None:
    assert await write_calendar_events(mongo_db, [upserted(1), upserted(2, day="2026-12-26")]) == 2
    # Read again from the beginning (the projector restarted): nothing older is written.
    assert await write_calendar_events(mongo_db, [upserted(1)]) == 0
    doc = await mongo_db[COLLECTION].find_one({"_id": "acme/hol"})
    assert doc is not None and doc["revision"] == 2 and doc["calendar"]["dates"] == ["2026-12-26"]
    # A racing writer's event at the same revision is not written either: the first one stays
    # (the API compares event ids to tell its caller it lost).
    rival = upserted(2, day="2026-07-14").model_copy(update={"event_id": "rival"})
    assert await write_calendar_events(mongo_db, [rival]) == 0
    doc = await mongo_db[COLLECTION].find_one({"_id": "acme/hol"})
    assert doc is not None and doc["event_id"] == calendar_event_id("acme", "hol", 2, "r")
    assert await write_calendar_events(mongo_db, [deleted(3)]) == 1
    doc = await mongo_db[COLLECTION].find_one({"_id": "acme/hol"})
    assert doc is not None and doc["deleted"] is True and doc["calendar"] is None and doc["revision"] == 3
