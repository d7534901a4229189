"""The ``calendars`` view: one document per ``<tenant>/<name>``, from the ``calendars`` topic.

The topic is compacted and small, so the projector reads it whole at every start (no consumer
group, nothing to commit) and then follows it. A document is written only when the event's
revision is above the document's, so reading the topic again from the beginning never takes a
calendar back to an older revision. A deleted calendar keeps its document (``deleted: true``)
so the next creation of the name continues its revisions.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from schemas.calendars import CalendarUpserted
from streams.calendars import CalendarEventT, CalendarFollower
from streams.settings import Settings

log = logging.getLogger(__name__)

COLLECTION = "calendars"
"""Name of the view's collection (not rebuilt by ``replay``: the topic is the view's source)."""

Doc = dict[str, Any]


def calendar_doc(event: CalendarEventT) -> Doc:
    """The view document a calendar event leads to (the whole document: events carry it all)."""
    upserted = isinstance(event, CalendarUpserted)
    return {
        "_id": event.key,
        "tenant": event.tenant,
        "name": event.name,
        "revision": event.revision,
        "event_id": event.event_id,
        "deleted": not upserted,
        "calendar": event.calendar.model_dump(mode="json") if isinstance(event, CalendarUpserted) else None,
        "updated_at": event.at,
        "actor": event.actor,
    }


async def write_calendar_events(db: AsyncDatabase[Doc], events: list[CalendarEventT]) -> int:
    """Write the documents of ``events`` whose revision is above the stored one; returns how many."""
    collection = db[COLLECTION]
    written = 0
    for event in events:
        held = await collection.find_one({"_id": event.key}, {"revision": 1})
        if held is not None and int(held.get("revision", 0)) >= event.revision:
            continue
        await collection.replace_one({"_id": event.key}, calendar_doc(event), upsert=True)
        written += 1
    return written


async def follow_calendars(settings: Settings, db: AsyncDatabase[Doc]) -> None:
    """Keep the ``calendars`` view up to date with the topic until cancelled."""

    async def write(events: list[CalendarEventT]) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(PyMongoError),
            wait=wait_exponential(max=30),
            stop=stop_after_attempt(1_000_000),
            reraise=True,
        ):
            with attempt:
                await write_calendar_events(db, events)

    await CalendarFollower(settings, on_events=write).run()
