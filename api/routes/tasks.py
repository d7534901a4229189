"""``/v1/tasks``: task commands (create, update, delete, pause, resume, trigger) and task queries."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Response

from api.auth import Principal
from api.commands import (
    check_idempotency_key,
    check_storable,
    command_id_for,
    execution_public,
    new_task_ids,
    now,
    parse_if_match,
    secret_error,
    submit,
    task_public,
)
from api.deps import Admin, ApiState, IdempotencyKey, Operator, State, Viewer, Wait
from api.errors import ERROR_RESPONSES, Conflict, FieldError, NotFound, Unprocessable, problem_responses
from api.models import (
    TASK_EXAMPLES,
    CommandResult,
    ExecutionPage,
    FireTime,
    NextFireTimes,
    PauseRequest,
    TaskCreate,
    TaskEventPage,
    TaskEventPublic,
    TaskPage,
    TaskPublic,
    TriggerRequest,
)
from api.queries import Doc, TaskSort, Views, internal_task_id
from api.routes.calendars import check_task_calendars, tenant_calendars
from api.routes.events import public_event
from api.routes.notifications import notification_problems
from api.settings import ApiSettings
from projections.folds import from_micros
from scheduler.calendar import Exclusions, task_calendars
from scheduler.schedule import anchor_for, fire_at, next_slot
from schemas.calendars import Calendar
from schemas.commands import CreateTask, DeleteTask, PauseTask, ResumeTask, TriggerTask, UpdateTask
from schemas.secrets import SecretError, seal_definition, seal_params
from schemas.specs import TOLERANT, HandlerWork, HttpWork, KafkaWork, ShellWork, TaskDefinition
from streams.fence import TopicFence, literal_url_refusal
from streams.shell import ShellFence

router = APIRouter(prefix="/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES)

TaskId = Annotated[str, Path(description="The task's id (as returned on create).", max_length=200)]
TaskStatus = Literal["active", "paused", "completed", "deleted"]
WorkType = Literal["http", "kafka", "handler", "shell"]
ExecutionStatus = Literal[
    "buffered", "scheduled", "running", "retrying", "succeeded", "failed", "timed_out", "cancelled", "skipped"
]
# Enumerations rather than `pattern="^...$"`: nothing to get wrong about what `$` matches.


def check_work_fence(definition: TaskDefinition, tenant: str, settings: ApiSettings) -> None:
    """422 naming the field when the work aims where the deployment fences it off: a Kafka topic
    not allowed (or the deployment's own), an HTTP URL whose host is literally a refused
    address, a handler not in the allow-list, a shell program, env variable or working
    directory the operator does not allow. An early answer only: the executor checks again
    where the work runs, and checks the address each name resolves to (and the real file each
    program is) then."""
    work = definition.work
    problems: list[tuple[str, str]] = []
    if isinstance(work, KafkaWork):
        refusal = TopicFence.from_settings(settings).refusal(work.topic, tenant)
        if refusal is not None:
            problems.append(("work.topic", refusal))
    elif isinstance(work, HttpWork):
        urls = [("work.url", work.url)]
        if work.poll is not None:
            urls.append(("work.poll.status_url", work.poll.status_url))
        if work.cancel is not None:
            urls.append(("work.cancel.url", work.cancel.url))
        for path, url in urls:
            refusal = literal_url_refusal(url, settings.http_allow_networks)
            if refusal is not None:
                problems.append((path, refusal))
    elif isinstance(work, HandlerWork) and not handlers_allow(work.name, settings.allowed_handlers):
        problems.append(("work.name", f"handler {work.name!r} is not allowed (SCHED_ALLOWED_HANDLERS)"))
    elif isinstance(work, ShellWork):
        _, refused = ShellFence.from_settings(settings).vet(work, must_exist=False)
        problems.extend((f"work.{path}", message) for path, message in refused)
    problems += notification_problems(definition.notifications, tenant, settings, "notifications")
    if problems:
        errors = [
            FieldError(field=f"definition.{path}", message=message, pointer="#/" + _pointer_path(path))
            for path, message in problems
        ]
        raise Unprocessable("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)


def _pointer_path(path: str) -> str:
    """``work.argv[0]`` as the JSON pointer path ``work/argv/0``."""
    return re.sub(r"\[(\d+)\]", r".\1", path).replace(".", "/")


def handlers_allow(name: str, allowed: list[str] | None) -> bool:
    """Whether the handler allow-list (None: every registered handler) lets ``name`` run."""
    return allowed is None or name in allowed


async def live_task(views: Views, tenant: str, task_id: str) -> Doc:
    """The task a command targets: it must exist (not deleted) in the caller's tenant."""
    doc = await views.task(tenant, task_id)
    if doc is None or doc.get("status") == "deleted":
        raise NotFound(f"task {task_id!r} not found")
    return doc


@router.post(
    "",
    status_code=202,
    summary="Create a task",
    responses={
        200: {"model": CommandResult, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 409, 413, 429),
    },
)
async def create_task(
    state: State,
    principal: Admin,
    response: Response,
    definition: Annotated[TaskCreate, Body(openapi_examples=TASK_EXAMPLES)],
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Create a task from its definition. Needs the admin role.

    The id is generated, or derived from the `Idempotency-Key` header so that a retried
    request returns the same id and is applied once.
    """
    key = check_idempotency_key(idempotency_key)
    check_work_fence(definition, principal.tenant, state.settings)
    await check_task_calendars(state, principal.tenant, definition, None)
    public_id, command_id = new_task_ids(principal.tenant, key)
    task_id = internal_task_id(principal.tenant, public_id)
    command = CreateTask(
        command_id=command_id,
        task_id=task_id,
        tenant=principal.tenant,
        actor=principal.actor,
        at=now(),
        definition=_sealed(state, principal, task_id, definition, None),
    )
    return await submit(state, principal, command, response, wait=wait, idempotency_key=key)


@router.get("", summary="List tasks")
async def list_tasks(
    state: State,
    principal: Viewer,
    status: Annotated[TaskStatus | None, Query(description="Only this status (default: all but deleted).")] = None,
    type: Annotated[WorkType | None, Query(description="Only this kind of work.")] = None,
    tag: Annotated[str | None, Query(max_length=200, description="Only tasks with this tag.")] = None,
    sort: Annotated[
        TaskSort, Query(description="`created_at` (newest first), `name`, or `next_run` (soonest first).")
    ] = "created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page.")] = None,
) -> TaskPage:
    """The caller's tenant's tasks, one page at a time."""
    docs, next_cursor = await state.views.tasks(
        principal.tenant, status=status, work_type=type, tag=tag, sort=sort, limit=limit, cursor=cursor
    )
    return TaskPage(items=[task_public(d, principal.tenant) for d in docs], next_cursor=next_cursor)


@router.get("/{task_id}", summary="Get a task", responses=problem_responses(404))
async def get_task(
    state: State,
    principal: Viewer,
    task_id: TaskId,
    response: Response,
    include_deleted: Annotated[bool, Query(description="Also show a deleted task.")] = False,
) -> TaskPublic:
    """The task as the views show it; its `ETag` is the revision to send back in `If-Match`."""
    doc = await state.views.task(principal.tenant, task_id)
    if doc is None or (doc.get("status") == "deleted" and not include_deleted):
        raise NotFound(f"task {task_id!r} not found")
    response.headers["ETag"] = f'"{doc.get("revision")}"'
    return task_public(doc, principal.tenant)


@router.put(
    "/{task_id}",
    status_code=202,
    summary="Replace a task's definition",
    responses={
        200: {"model": CommandResult, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 404, 409, 413),
    },
)
async def update_task(
    state: State,
    principal: Admin,
    task_id: TaskId,
    response: Response,
    definition: Annotated[TaskCreate, Body(openapi_examples=TASK_EXAMPLES)],
    wait: Wait = None,
    if_match: Annotated[
        str | None, Header(alias="If-Match", description='The revision the change is based on, e.g. `"3"`.')
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Replace the definition; the schedule restarts now. Needs the admin role.

    Secrets show as `***` when read; `***` sent back in the same place keeps the stored secret.

    With `If-Match`, the change applies only if the task is still at that revision: a stale
    revision is a 409 (at once when the views already show a newer one, else with `?wait`).
    """
    expected = parse_if_match(if_match)
    key = check_idempotency_key(idempotency_key)
    check_work_fence(definition, principal.tenant, state.settings)
    doc = await live_task(state.views, principal.tenant, task_id)
    await check_task_calendars(state, principal.tenant, definition, doc)
    if expected is not None and expected < int(doc.get("revision", 0)):
        # Revisions only grow, so a revision older than the view's is stale for sure.
        state.metrics.command("UpdateTask", "rejected")
        raise Conflict(f"expected revision {expected} but the task is at revision {doc.get('revision')}")
    command = UpdateTask(
        command_id=command_id_for(principal.tenant, "update", task_id, key),
        task_id=doc["_id"],
        tenant=principal.tenant,
        actor=principal.actor,
        at=now(),
        definition=_sealed(state, principal, doc["_id"], definition, doc.get("definition")),
        expected_revision=expected,
    )
    return await submit(state, principal, command, response, wait=wait, idempotency_key=key)


@router.delete(
    "/{task_id}",
    status_code=202,
    summary="Delete a task",
    responses={200: {"model": CommandResult, "description": "Applied (with `?wait`)"}, **problem_responses(404)},
)
async def delete_task(
    state: State,
    principal: Admin,
    task_id: TaskId,
    response: Response,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Delete the task; executions in flight are cancelled. Needs the admin role."""
    return await _task_command(state, principal, task_id, response, wait, idempotency_key, DeleteTask, "delete")


@router.post(
    "/{task_id}/pause",
    status_code=202,
    summary="Pause a task",
    responses={
        200: {"model": CommandResult, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 404, 409),
    },
)
async def pause_task(
    state: State,
    principal: Operator,
    task_id: TaskId,
    response: Response,
    body: Annotated[
        PauseRequest | None, Body(openapi_examples={"note": {"value": {"note": "maintenance window"}}})
    ] = None,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Stop firing scheduled slots (runs in flight continue). Needs the operator role.

    Pausing a paused task changes nothing (with `?wait` it then answers 202 when the time runs out).
    """
    note = body.note if body else None
    return await _task_command(
        state, principal, task_id, response, wait, idempotency_key, PauseTask, "pause", note=note
    )


@router.post(
    "/{task_id}/resume",
    status_code=202,
    summary="Resume a task",
    responses={200: {"model": CommandResult, "description": "Applied (with `?wait`)"}, **problem_responses(404, 409)},
)
async def resume_task(
    state: State,
    principal: Operator,
    task_id: TaskId,
    response: Response,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Resume firing; slots missed while paused go through the catch-up policy. Needs the operator role."""
    return await _task_command(state, principal, task_id, response, wait, idempotency_key, ResumeTask, "resume")


@router.post(
    "/{task_id}/trigger",
    status_code=202,
    summary="Run a task now",
    responses={
        200: {"model": CommandResult, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 404, 409, 429),
    },
)
async def trigger_task(
    state: State,
    principal: Operator,
    task_id: TaskId,
    response: Response,
    body: Annotated[
        TriggerRequest | None,
        Body(
            openapi_examples={
                "plain": {"summary": "Run once now", "value": {}},
                "params": {
                    "summary": "With a trigger id and parameters",
                    "value": {"trigger_id": "deploy-1234", "params": {"dry_run": True}, "priority": "high"},
                },
            }
        ),
    ] = None,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Run the task once now, whatever its schedule (paused and completed tasks too). Needs the operator role.

    A trigger id runs at most once; it defaults to the command id (derived from
    `Idempotency-Key` when given). With `?wait`, `execution_id` names the run.
    """
    key = check_idempotency_key(idempotency_key)
    doc = await live_task(state.views, principal.tenant, task_id)
    command_id = command_id_for(principal.tenant, "trigger", task_id, key)
    body = body or TriggerRequest()
    params = body.params
    if params is not None:
        check_storable(params, "params")  # before sealing encodes it
        sensitive = (doc.get("definition") or {}).get("sensitive_params") or []
        try:
            params = seal_params(params, sensitive, keyring=state.keyring, tenant=principal.tenant, task_id=doc["_id"])
        except SecretError as exc:
            raise secret_error(exc, None) from None
    command = TriggerTask(
        command_id=command_id,
        task_id=doc["_id"],
        tenant=principal.tenant,
        actor=principal.actor,
        at=now(),
        trigger_id=body.trigger_id or command_id,
        params=params,
        priority=body.priority,
    )
    return await submit(state, principal, command, response, wait=wait, idempotency_key=key)


def _sealed(
    state: ApiState, principal: Principal, task_id: str, definition: TaskDefinition, stored: Doc | None
) -> TaskDefinition:
    """``definition`` with its secrets encrypted for the task (422 naming a field that cannot be)."""
    check_storable(definition, "definition")  # before sealing encodes it
    try:
        return seal_definition(
            definition, keyring=state.keyring, tenant=principal.tenant, task_id=task_id, stored=stored
        )
    except SecretError as exc:
        raise secret_error(exc, "definition") from None


@router.get("/{task_id}/next-fire-times", summary="Preview the next fire times", responses=problem_responses(404))
async def next_fire_times(
    state: State,
    principal: Viewer,
    task_id: TaskId,
    n: Annotated[int, Query(ge=1, le=100, description="How many.")] = 10,
) -> NextFireTimes:
    """The task's next `n` slots after now, computed from its stored definition.

    Exactly what the worker fires: the same slot rules (cron day-of-month/day-of-week and
    daylight saving as described under `CronSchedule`, interval anchors to the microsecond)
    and the same deterministic jitter in `fire_at`. Honours `start_at`, `end_at` and
    `max_runs`; empty for unscheduled, completed or deleted tasks. A paused task shows the
    slots it would fire once resumed. A slot one of the task's calendars excludes names it in
    `excluded_by` (it will be recorded missed, not run).
    """
    doc = await live_task(state.views, principal.tenant, task_id)
    # TOLERANT: a definition accepted under older rules (e.g. a jitter above the gap) still previews.
    definition = TaskDefinition.model_validate(doc["definition"], context=TOLERANT)
    times: list[FireTime] = []
    if definition.schedule is not None and doc.get("status") in ("active", "paused"):
        runs = 0
        if definition.max_runs is not None:
            runs = await state.views.scheduled_runs(principal.tenant, doc)
        calendars = task_calendars(definition, await tenant_calendars(state, principal.tenant))
        # Pure, but a slot costs a cron step per calendar rule: off the event loop.
        times = await asyncio.to_thread(_preview, doc, definition, n, runs, calendars)
    return NextFireTimes(task_id=task_id, status=str(doc.get("status")), fire_times=times)


def _preview(doc: Doc, definition: TaskDefinition, n: int, runs: int, calendars: list[Calendar]) -> list[FireTime]:
    """Up to ``n`` slots strictly after now (and after the last slot handled), each with the
    calendar that excludes it, if any (an excluded slot is not a run: ``runs`` stays).

    Interval schedules without an anchor of their own are anchored where the decider anchors
    them: at the task's creation instant to the microsecond (``created_at_us``; ``created_at``
    is a millisecond BSON date, so a slot from it could be off by up to a millisecond and its
    jitter, a hash of the slot, by many seconds).
    """
    micros = doc.get("created_at_us")
    created_at = from_micros(micros) if isinstance(micros, int) else doc.get("created_at") or now()
    anchor = anchor_for(definition, created_at)
    after = now()
    last_slot = doc.get("last_slot")
    if last_slot is not None and last_slot > after:
        after = last_slot
    out: list[FireTime] = []
    exclusions = Exclusions(calendars)
    while len(out) < n:
        slot = next_slot(definition, after, anchor=anchor, runs_so_far=runs)
        if slot is None:
            break
        excluded = exclusions.excluded_by(slot)
        out.append(FireTime(slot=slot, fire_at=fire_at(doc["_id"], definition, slot), excluded_by=excluded))
        after, runs = slot, runs + (excluded is None)
    return out


@router.get("/{task_id}/executions", summary="List a task's executions", responses=problem_responses(404))
async def list_executions(
    state: State,
    principal: Viewer,
    task_id: TaskId,
    status: Annotated[ExecutionStatus | None, Query(description="Only this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page.")] = None,
) -> ExecutionPage:
    """The task's executions, newest (by scheduled time) first, including deleted tasks' history."""
    doc = await state.views.task(principal.tenant, task_id)
    if doc is None:
        raise NotFound(f"task {task_id!r} not found")
    docs, next_cursor = await state.views.executions(
        principal.tenant, doc["_id"], status=status, limit=limit, cursor=cursor
    )
    return ExecutionPage(items=[execution_public(d, principal.tenant) for d in docs], next_cursor=next_cursor)


@router.get("/{task_id}/events", summary="List a task's events", responses=problem_responses(404))
async def list_task_events(
    state: State,
    principal: Viewer,
    task_id: TaskId,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**62, description="`next_before` of the previous page: older events only.")
    ] = None,
) -> TaskEventPage:
    """The task's history as the audit view holds it, newest first (deleted tasks' too).

    Each event is shown as on `/v1/events/stream`: secrets as `***`, the task id as the client knows it.
    """
    doc = await state.views.task(principal.tenant, task_id)
    if doc is None:
        raise NotFound(f"task {task_id!r} not found")
    docs, next_before = await state.views.task_events(principal.tenant, doc["_id"], limit=limit, before=before)
    items = [
        TaskEventPublic(
            id=str(d["_id"]),
            type=str(d.get("type")),
            sequence=int(d.get("sequence", 0)),
            at=d.get("at"),
            actor=d.get("actor"),
            data=public_event(d.get("body") or {}, principal.tenant),
        )
        for d in docs
    ]
    return TaskEventPage(items=items, next_before=next_before)


async def _task_command(
    state: ApiState,
    principal: Principal,
    task_id: str,
    response: Response,
    wait: float | None,
    idempotency_key: str | None,
    command_type: type[DeleteTask | PauseTask | ResumeTask],
    verb: str,
    **fields: Any,
) -> CommandResult:
    """Send a command about one of the caller's live tasks (404 when it has none by that id)."""
    key = check_idempotency_key(idempotency_key)
    doc = await live_task(state.views, principal.tenant, task_id)
    command = command_type(
        command_id=command_id_for(principal.tenant, verb, task_id, key),
        task_id=doc["_id"],
        tenant=principal.tenant,
        actor=principal.actor,
        at=now(),
        **fields,
    )
    return await submit(state, principal, command, response, wait=wait, idempotency_key=key)
