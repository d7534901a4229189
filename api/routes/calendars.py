"""``/v1/calendars``: a tenant's calendars (admin writes, viewers read), and the checks of a
task's ``definition.calendars``.

Changes go to the compacted ``calendars`` topic as ``CalendarUpserted`` / ``CalendarDeleted``
(revision = the view's revision + 1); the projector writes the ``calendars`` view the reads and
checks use, and every worker reads the topic into memory for its decider. Rules, all answered
before anything is produced, so nothing accepted changes:

* a task naming a calendar its tenant does not have: 422 naming ``definition.calendars.<i>``;
* a task whose calendars exclude every slot of its schedule in the next year (or every slot
  of a bounded schedule): 422 naming ``definition.calendars``;
* a calendar excluding every instant of the next year: 422;
* a calendar replaced so that it would exclude every slot of a task referencing it: 422;
* deleting a calendar tasks still reference: 409 naming them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel, Field

from api import correlation
from api.commands import now, parse_if_match
from api.deps import Admin, ApiState, State, Viewer, Wait
from api.errors import (
    ERROR_RESPONSES,
    Conflict,
    FieldError,
    NotFound,
    TooManyRequests,
    Unprocessable,
    problem_responses,
)
from api.queries import public_task_id
from projections.calendars import COLLECTION
from projections.folds import from_micros
from scheduler.calendar import every_slot_excluded, excludes_all_time, task_calendars
from scheduler.schedule import anchor_for
from schemas.calendars import (
    CALENDAR_NAME_PATTERN,
    MAX_TASK_RULES,
    Calendar,
    CalendarBody,
    CalendarDeleted,
    CalendarUpserted,
    DateRange,
    ExclusionRule,
    calendar_key,
)
from schemas.specs import TOLERANT, TaskDefinition
from streams.calendars import calendar_event_id, encode_calendar_event

router = APIRouter(prefix="/v1/calendars", tags=["calendars"], responses=ERROR_RESPONSES)

SOURCE = "/scheduler/api"
HORIZON = timedelta(days=366)
"""How far ahead a task's slots are checked against its calendars."""
MAX_REFERENCING = 1000
"""Most referencing tasks a calendar change is checked against (and a refusal names)."""
CHECK_STEPS = 30_000
"""Work one request may spend proving that calendars exclude every slot: exclusions walked plus
cron matches the calendars' rules computed (``scheduler.calendar.MAX_CHECK_STEPS``; about half a
second at worst, off the event loop); what is not proven within it is accepted: the check is a
guard against mistakes, and a task whose slots are all excluded only records them missed."""

Name = Annotated[
    str, Path(description="The calendar's name, unique in the tenant.", pattern=CALENDAR_NAME_PATTERN, max_length=63)
]
Doc = dict[str, Any]


class CalendarPublic(BaseModel):
    """A calendar as the views show it."""

    name: str
    revision: int
    """Grows by one per change; send it back in ``If-Match`` to update only that version."""
    timezone: str
    description: str | None = None
    dates: list[str] = Field(default_factory=list)
    ranges: list[DateRange] = Field(default_factory=list)
    rules: list[ExclusionRule] = Field(default_factory=list)
    updated_at: datetime | None = None


class CalendarPage(BaseModel):
    """A page of calendars, by name."""

    items: list[CalendarPublic]
    next_after: str | None = None
    """Pass as ``after`` for the next page; None on the last page."""


class CalendarAccepted(BaseModel):
    """A calendar change written to Kafka (``?wait`` not given, or the views are not there yet)."""

    name: str
    revision: int
    deleted: bool = False


# ---------------------------------------------------------------------------------------------
# Reads of the view
# ---------------------------------------------------------------------------------------------


async def _doc(state: ApiState, tenant: str, name: str) -> Doc | None:
    return await state.views.db[COLLECTION].find_one({"_id": calendar_key(tenant, name)})


async def tenant_calendars(state: ApiState, tenant: str) -> dict[str, Calendar]:
    """The tenant's live calendars by name, as the view holds them."""
    out: dict[str, Calendar] = {}
    async for doc in state.views.db[COLLECTION].find({"tenant": tenant, "deleted": False}):
        calendar = Calendar.model_validate(doc["calendar"])
        out[calendar.name] = calendar
    return out


async def _referencing(state: ApiState, tenant: str, name: str) -> list[Doc]:
    names = await state.views.names()
    cursor = state.views.db[names.tasks].find(
        {"tenant": tenant, "definition.calendars": name, "status": {"$ne": "deleted"}},
        {"_id": 1, "definition": 1, "created_at": 1, "created_at_us": 1, "last_slot": 1},
    )
    return [doc async for doc in cursor.limit(MAX_REFERENCING)]


def _public(doc: Doc) -> CalendarPublic:
    calendar = doc.get("calendar") or {}
    return CalendarPublic(
        name=str(doc["name"]),
        revision=int(doc["revision"]),
        timezone=calendar.get("timezone", "UTC"),
        description=calendar.get("description"),
        dates=calendar.get("dates") or [],
        ranges=calendar.get("ranges") or [],
        rules=calendar.get("rules") or [],
        updated_at=doc.get("updated_at"),
    )


# ---------------------------------------------------------------------------------------------
# Checks of a task's definition
# ---------------------------------------------------------------------------------------------


def _created_at(doc: Doc | None) -> datetime:
    if doc is None:
        return now()
    micros = doc.get("created_at_us")
    created: datetime | None = from_micros(micros) if isinstance(micros, int) else doc.get("created_at")
    return created or now()


async def _excludes_all(
    definition: TaskDefinition, calendars: list[Calendar], task: Doc | None, budget: list[int]
) -> bool:
    """Whether ``calendars`` provably exclude every slot of the next year; spends ``budget[0]`` steps."""
    if not calendars or budget[0] <= 0:
        return False
    start = now()
    anchor = anchor_for(definition, _created_at(task))
    # Pure, but it can take a while (a cron rule is evaluated per step): off the event loop.
    proven, steps = await asyncio.to_thread(
        every_slot_excluded, definition, calendars, start, start + HORIZON, anchor=anchor, max_steps=budget[0]
    )
    budget[0] -= steps
    return proven is True


def _rules_of(calendars: list[Calendar]) -> int:
    """How many rules ``calendars`` hold together (see ``MAX_TASK_RULES``)."""
    return sum(len(c.rules) for c in calendars)


async def check_task_calendars(state: ApiState, tenant: str, definition: TaskDefinition, task: Doc | None) -> None:
    """422 when ``definition.calendars`` names a calendar the tenant does not have, or when its
    calendars exclude every slot of the schedule in the next year (``task``: the stored task
    of an update, None for a creation)."""
    if not definition.calendars:
        return
    known = await tenant_calendars(state, tenant)
    unknown = [
        FieldError(
            field=f"definition.calendars.{i}",
            message=f"no calendar named {name!r} in this tenant",
            pointer=f"#/calendars/{i}",
        )
        for i, name in enumerate(definition.calendars)
        if name not in known
    ]
    if unknown:
        raise Unprocessable("; ".join(f"{e.field}: {e.message}" for e in unknown), errors=unknown)
    if (rules := _rules_of(task_calendars(definition, known))) > MAX_TASK_RULES:
        message = f"these calendars hold {rules} rules together; a task's calendars may hold at most {MAX_TASK_RULES}"
        raise Unprocessable(
            f"definition.calendars: {message}",
            errors=[FieldError(field="definition.calendars", message=message, pointer="#/calendars")],
        )
    if await _excludes_all(definition, task_calendars(definition, known), task, [CHECK_STEPS]):
        message = "these calendars exclude every slot of the schedule in the next year (the task would never run)"
        raise Unprocessable(
            f"definition.calendars: {message}",
            errors=[FieldError(field="definition.calendars", message=message, pointer="#/calendars")],
        )


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


@router.get("", summary="List calendars")
async def list_calendars(
    state: State,
    principal: Viewer,
    after: Annotated[
        str | None, Query(max_length=63, description="`next_after` of the previous page: names after it.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> CalendarPage:
    """The caller's tenant's calendars, by name."""
    query: Doc = {"tenant": principal.tenant, "deleted": False}
    if after is not None:
        query["name"] = {"$gt": after}
    cursor = state.views.db[COLLECTION].find(query).sort("name", 1).limit(limit + 1)
    docs = [doc async for doc in cursor]
    more = len(docs) > limit
    items = [_public(d) for d in docs[:limit]]
    return CalendarPage(items=items, next_after=items[-1].name if more else None)


@router.get("/{name}", summary="Get a calendar", responses=problem_responses(404))
async def get_calendar(state: State, principal: Viewer, name: Name, response: Response) -> CalendarPublic:
    """One calendar; its `ETag` is the revision to send back in `If-Match`."""
    doc = await _doc(state, principal.tenant, name)
    if doc is None or doc.get("deleted"):
        raise NotFound(f"calendar {name!r} not found")
    response.headers["ETag"] = f'"{doc["revision"]}"'
    return _public(doc)


@router.put(
    "/{name}",
    status_code=202,
    summary="Create or replace a calendar",
    responses={
        200: {"model": CalendarPublic, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 409, 429),
    },
)
async def put_calendar(
    state: State,
    principal: Admin,
    name: Name,
    body: CalendarBody,
    response: Response,
    wait: Wait = None,
    if_match: Annotated[
        str | None, Header(alias="If-Match", description='Only if the calendar is at this revision, e.g. `"3"`.')
    ] = None,
) -> CalendarPublic | CalendarAccepted:
    """Create the calendar, or replace it whole. Needs the admin role.

    Refused (422) when it excludes every instant of the next year, or would exclude every slot
    in the next year of a task that references it; with `If-Match`, refused (409) unless the
    calendar is at that revision.
    """
    expected = parse_if_match(if_match)
    doc = await _doc(state, principal.tenant, name)
    live = doc is not None and not doc.get("deleted")
    revision = int(doc["revision"]) if doc is not None else 0
    if expected is not None and (not live or expected != revision):
        at = f"revision {revision}" if live else "no revision (it does not exist)"
        raise Conflict(f"expected revision {expected} but calendar {name!r} is at {at}")
    if not live:
        await _check_quota(state, principal.tenant)
    calendar = Calendar(name=name, **body.model_dump())
    start = now()
    if await asyncio.to_thread(excludes_all_time, calendar, start, start + HORIZON, max_steps=CHECK_STEPS):
        message = "excludes every instant of the next year: any task using it would never run"
        raise Unprocessable(f"body: {message}", errors=[FieldError(field="body", message=message, pointer="#")])
    await _check_referencing(state, principal.tenant, calendar)
    event = CalendarUpserted(
        event_id=calendar_event_id(principal.tenant, name, revision + 1, _request_id()),
        tenant=principal.tenant,
        name=name,
        revision=revision + 1,
        at=now(),
        actor=principal.actor,
        calendar=calendar,
    )
    return await _publish(state, event, response, wait)


@router.delete(
    "/{name}",
    status_code=202,
    summary="Delete a calendar",
    responses={
        200: {"model": CalendarAccepted, "description": "Applied (with `?wait`)"},
        **problem_responses(404, 409),
    },
)
async def delete_calendar(
    state: State, principal: Admin, name: Name, response: Response, wait: Wait = None
) -> CalendarPublic | CalendarAccepted:
    """Delete the calendar. Needs the admin role; refused (409) while tasks reference it."""
    doc = await _doc(state, principal.tenant, name)
    if doc is None or doc.get("deleted"):
        raise NotFound(f"calendar {name!r} not found")
    tasks = await _referencing(state, principal.tenant, name)
    if tasks:
        ids = [public_task_id(principal.tenant, str(t["_id"])) for t in tasks]
        shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        raise Conflict(f"calendar {name!r} is referenced by tasks {shown}; remove it from them first")
    revision = int(doc["revision"]) + 1
    event = CalendarDeleted(
        event_id=calendar_event_id(principal.tenant, name, revision, _request_id()),
        tenant=principal.tenant,
        name=name,
        revision=revision,
        at=now(),
        actor=principal.actor,
    )
    return await _publish(state, event, response, wait)


async def _check_quota(state: ApiState, tenant: str) -> None:
    """429 when the tenant already has as many calendars as ``SCHED_QUOTA_MAX_CALENDARS``."""
    limit = state.settings.quota_max_calendars
    if await state.views.db[COLLECTION].count_documents({"tenant": tenant, "deleted": False}) >= limit:
        raise TooManyRequests(
            f"this tenant has {limit} calendars, its most (SCHED_QUOTA_MAX_CALENDARS); delete one first",
            retry_after=state.settings.retry_after_seconds,
        )


async def _check_referencing(state: ApiState, tenant: str, calendar: Calendar) -> None:
    """422 when ``calendar`` would exclude every slot of a task that references it."""
    tasks = await _referencing(state, tenant, calendar.name)
    if not tasks:
        return
    known = {**await tenant_calendars(state, tenant), calendar.name: calendar}
    blocked: list[str] = []
    crowded: list[str] = []
    budget = [CHECK_STEPS]  # shared by the tasks: one request does bounded work
    for task in tasks:
        definition = TaskDefinition.model_validate(task["definition"], context=TOLERANT)
        if _rules_of(task_calendars(definition, known)) > MAX_TASK_RULES:
            crowded.append(public_task_id(tenant, str(task["_id"])))
        elif await _excludes_all(definition, task_calendars(definition, known), task, budget):
            blocked.append(public_task_id(tenant, str(task["_id"])))
    if crowded:
        message = (
            f"task(s) {', '.join(crowded[:20])}{' and more' if len(crowded) > 20 else ''} would have more than "
            f"{MAX_TASK_RULES} calendar rules together"
        )
        raise Unprocessable(f"rules: {message}", errors=[FieldError(field="rules", message=message, pointer="#/rules")])
    if blocked:
        message = (
            f"would exclude every slot in the next year of task(s) {', '.join(blocked[:20])}"
            f"{' and more' if len(blocked) > 20 else ''} (they would never run)"
        )
        raise Unprocessable(f"calendar: {message}", errors=[FieldError(field="body", message=message, pointer="#")])


def _request_id() -> str:
    # Unique per request (a client may repeat an X-Request-Id): a lost race must be detectable.
    return str(uuid.uuid4())


async def _publish(
    state: ApiState, event: CalendarUpserted | CalendarDeleted, response: Response, wait: float | None
) -> CalendarPublic | CalendarAccepted:
    value = encode_calendar_event(event, SOURCE, correlation.current.get())
    await state.bus.publish(state.settings.topics.calendars, event.key.encode(), value, what=f"calendar {event.key}")
    accepted = CalendarAccepted(name=event.name, revision=event.revision, deleted=isinstance(event, CalendarDeleted))
    if not wait:
        return accepted
    deadline = time.monotonic() + min(wait, state.settings.max_wait_seconds)
    while True:
        doc = await _doc(state, event.tenant, event.name)
        if doc is not None and int(doc.get("revision", 0)) >= event.revision:
            if doc.get("revision") == event.revision and doc.get("event_id") != event.event_id:
                # Another change reached the same revision first: every reader keeps that one.
                raise Conflict(f"calendar {event.name!r} was changed concurrently to revision {event.revision}; "
                               "read it and try again")  # fmt: skip
            response.status_code = 200
            return accepted if doc.get("deleted") else _public(doc)
        if time.monotonic() >= deadline:
            return accepted
        await asyncio.sleep(state.settings.wait_poll_seconds)
