"""``/v1/reports``: what the caller's tenant's executions did over a time range, as JSON or CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Header, Query, Response
from pydantic import AfterValidator, AwareDatetime

from api.deps import State, Viewer
from api.errors import ERROR_RESPONSES, FieldError, NotFound, Unprocessable, problem_responses
from api.queries import PUBLIC_ID, internal_task_id
from api.reports import GroupBy, ReportBuilder, ReportFormat, ReportPublic, TaskLabel, prefers_csv, report_csv
from schemas._types import iana_zone

router = APIRouter(prefix="/v1", tags=["reports"], responses=ERROR_RESPONSES)

CSV_MEDIA_TYPE = "text/csv"


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first UTC instant there is
        raise ValueError("must be an instant between the years 1 and 9999 in UTC") from None


UtcInstant = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""An RFC 3339 date-time with its offset, as the UTC instant it names (BSON stores UTC)."""

From = Annotated[
    UtcInstant,
    Query(
        alias="from",
        description="Start of the range (included): an RFC 3339 date-time with its offset. "
        "Executions belong to the range by their scheduled time.",
        examples=["2026-03-01T00:00:00Z"],
    ),
]
To = Annotated[
    UtcInstant,
    Query(
        alias="to",
        description="End of the range (excluded), after `from`; at most `SCHED_REPORT_MAX_SPAN_DAYS` (400) "
        "days after it.",
        examples=["2026-04-01T00:00:00Z"],
    ),
]


def check_range(start: datetime, end: datetime, max_days: int) -> None:
    """Refuse a range that is empty, reversed or longer than ``max_days`` (422 naming ``to``)."""
    if end <= start:
        raise Unprocessable("to: must be after from", errors=[FieldError(field="to", message="must be after from")])
    if end - start > timedelta(days=max_days):
        message = f"the range may span at most {max_days} days"
        raise Unprocessable(f"to: {message}", errors=[FieldError(field="to", message=message)])


def zone_named(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; a 422 naming ``timezone`` when there is none."""
    try:
        return iana_zone(name)
    except ValueError as exc:
        raise Unprocessable(f"timezone: {exc}", errors=[FieldError(field="timezone", message=str(exc))]) from None


async def build_report(
    state: State,
    tenant: str,
    start: datetime,
    end: datetime,
    *,
    group_by: GroupBy,
    zone: ZoneInfo,
    task_id: str | None = None,
    tag: str | None = None,
) -> ReportBuilder:
    """Read the tenant's executions of ``[start, end)`` (of one task, or of the tasks tagged
    ``tag``) into a :class:`ReportBuilder`.

    :raises NotFound: ``task_id`` is not a task of the tenant.
    :raises Unprocessable: the range holds more than ``SCHED_REPORT_MAX_EXECUTIONS`` documents.
    """
    views = state.views
    labels: dict[str, TaskLabel] = {}
    task_ids: list[str] | None = None
    if task_id is not None:
        label = await views.task_label(tenant, task_id) if PUBLIC_ID.fullmatch(task_id) else None
        if label is None:
            raise NotFound(f"task {task_id!r} not found")
        labels = {internal_task_id(tenant, task_id): label}
        task_ids = list(labels)
    elif tag is not None or group_by != "day":
        labels = await views.task_labels(tenant)
    if tag is not None:
        labels = {k: v for k, v in labels.items() if tag in v.tags}
        task_ids = list(labels)
    builder = ReportBuilder(tenant, group_by, zone, labels)
    if task_ids == []:
        return builder  # no task has the tag: nothing to read
    limit = state.settings.report_max_executions
    async for doc in views.report_rows(tenant, start, end, task_ids=task_ids):
        if builder.read >= limit:
            message = f"the range holds more than {limit} executions: narrow it, or filter by task_id or tag"
            raise Unprocessable(
                message,
                errors=[FieldError(field="from", message=message), FieldError(field="to", message=message)],
            )
        builder.add(doc)
    return builder


@router.get(
    "/reports",
    summary="Execution report",
    response_model=ReportPublic,
    responses={
        200: {
            "description": "The report: JSON, or CSV (`format=csv` or `Accept: text/csv`) with a header row "
            "and one row per group.",
            "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **problem_responses(404),
    },
)
async def get_report(
    state: State,
    principal: Viewer,
    start: From,
    end: To,
    group_by: Annotated[
        GroupBy, Query(description="`task`, `tag` (a run counts under each tag of its task) or `day`.")
    ] = "task",
    timezone: Annotated[
        str, Query(max_length=64, description="IANA time zone the days are counted in (`group_by=day`).")
    ] = "UTC",
    task_id: Annotated[str | None, Query(max_length=100, description="Only this task (404 if none).")] = None,
    tag: Annotated[str | None, Query(max_length=200, description="Only tasks that have this tag now.")] = None,
    format: Annotated[
        ReportFormat | None, Query(description="`json` or `csv`; by default the `Accept` header decides (JSON).")
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> ReportPublic | Response:
    """Runs, outcomes, missed slots, success rate, duration and start lateness percentiles of
    the caller's tenant's executions scheduled in `[from, to)`, per group and in total.

    Percentiles are exact (nearest rank). A report reads every execution of the range once;
    one over more than `SCHED_REPORT_MAX_EXECUTIONS` executions is refused (422): narrow the
    range or filter. Finished executions older than the retention (`SCHED_RETENTION_DAYS`,
    90 by default) are no longer in the views, nor in a report.
    """
    check_range(start, end, state.settings.report_max_span_days)
    zone = zone_named(timezone)
    builder = await build_report(
        state, principal.tenant, start, end, group_by=group_by, zone=zone, task_id=task_id, tag=tag
    )
    groups = builder.groups()
    if format == "csv" or (format is None and prefers_csv(accept)):
        headers = {"Content-Disposition": 'attachment; filename="report.csv"'}
        return Response(report_csv(groups), media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8", headers=headers)
    return ReportPublic(
        from_=start,
        to=end,
        group_by=group_by,
        timezone=timezone,
        task_id=task_id,
        tag=tag,
        executions_read=builder.read,
        groups=groups,
        totals=builder.totals(),
    )
