"""Reports: what a tenant's executions did over a time range, grouped by task, tag or day.

The figures come from the ``executions`` view alone (plus task names and tags from the
``tasks`` view). An execution belongs to the range by its ``scheduled_for`` (the slot, or the
moment a manual run was asked for); missed slots are the view's ``skipped`` documents, counted
by their ``missed_count`` at their first slot.

Why percentiles are computed here: FerretDB's ``$group`` knows only ``$sum`` and ``$count``,
so the report reads the range once (the few fields it needs, one pass, no sort) and computes
exact percentiles in Python. The cost is one document read per execution in the range and two
integers kept per execution (per group it falls in); the reader stops, and the request is
refused, past ``SCHED_REPORT_MAX_EXECUTIONS`` documents, so the work of one request is bounded.
MongoDB serves the range from the ``(tenant, scheduled_for)`` index; FerretDB v1 reads the whole
collection to find it (it pushes down only ``_id`` filters): 4,000-8,000 documents a second
measured there, against about 3 microseconds a document for the computation itself.

Nothing here does I/O: :class:`ReportBuilder` folds the documents the route streams to it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Doc = dict[str, Any]
GroupBy = Literal["task", "tag", "day"]
"""How a report is grouped: by task, by each tag of the task, or by calendar day."""
ReportFormat = Literal["json", "csv"]

ROW_FIELDS: tuple[str, ...] = (
    "task_id",
    "tenant",
    "status",
    "scheduled_for",
    "started_at",
    "duration_ms",
    "missed_count",
)
"""The fields of an ``executions`` document a report reads (its projection)."""
PENDING_STATUSES = frozenset({"buffered", "scheduled", "running", "retrying"})
"""Statuses of an execution that has not finished yet."""
FINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "timed_out", "cancelled")

CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is read as a formula by spreadsheets (CSV injection):
such a cell is written with a leading ``'``."""


class Percentiles(BaseModel):
    """Percentiles of a set of durations in milliseconds, by nearest rank (each one an observed
    value); None when nothing was observed."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    p50: int | None = None
    """The median: half of the observations are at most this."""
    p95: int | None = None
    """95 % of the observations are at most this."""
    max: int | None = None
    """The largest observation."""
    count: int = 0
    """How many observations."""


class ReportFigures(BaseModel):
    """What the executions of a group did."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    runs: int = 0
    """Executions (each counted once, however many attempts it took), finished or not."""
    succeeded: int = 0
    """Succeeded (perhaps after retries)."""
    failed: int = 0
    """Failed after its last attempt."""
    timed_out: int = 0
    """Its last attempt ran past the deadline."""
    cancelled: int = 0
    """Cancelled by an operator (before or while running)."""
    pending: int = 0
    """Not finished yet (buffered, scheduled, running or waiting to retry)."""
    missed: int = 0
    """Slots that did not run (misfire, overlap, paused, ...), counted at the first slot of each
    missed range."""
    success_rate: float | None = None
    """``succeeded / (succeeded + failed + timed_out)``; cancelled and pending runs say nothing
    of the task's health and are left out. None when no run finished that way."""
    duration_ms: Percentiles = Field(default_factory=Percentiles)
    """Duration of finished executions, first start to finish, retries included."""
    lateness_ms: Percentiles = Field(default_factory=Percentiles)
    """Start lateness: first start minus ``scheduled_for`` (negative when a worker's clock is
    ahead)."""


class ReportGroup(ReportFigures):
    """The figures of one group."""

    key: str | None
    """The task id, the tag, or the day (``YYYY-MM-DD`` in the report's time zone); None is the
    group of tasks without a tag (grouped by tag)."""
    name: str | None = None
    """The task's name (grouped by task), as the tasks view holds it now."""


class ReportPublic(BaseModel):
    """A report over ``[from, to)`` of the caller's tenant."""

    model_config = ConfigDict(populate_by_name=True, use_attribute_docstrings=True)

    from_: datetime = Field(alias="from")
    """Start of the range (included), by ``scheduled_for``."""
    to: datetime
    """End of the range (excluded)."""
    group_by: GroupBy
    """What the groups are: tasks, tags or days."""
    timezone: str
    """IANA time zone the days are counted in."""
    task_id: str | None = None
    """Only this task (when asked)."""
    tag: str | None = None
    """Only tasks with this tag (when asked)."""
    executions_read: int
    """Execution documents read for the report (the work it cost)."""
    groups: list[ReportGroup]
    """One per group with at least one execution or missed slot, ordered by key."""
    totals: ReportFigures
    """Every execution of the range (a tag group may share executions with another: its
    figures do not add up to the totals)."""


class StatsWindow(BaseModel):
    """The report figures of the tenant's executions over ``[from, to)``."""

    model_config = ConfigDict(populate_by_name=True, use_attribute_docstrings=True)

    from_: datetime = Field(alias="from")
    to: datetime
    figures: ReportFigures


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[int], q: float) -> int | None:
    """The ``q``-quantile (0 < q <= 1) of ascending ``ordered`` by nearest rank; None if empty.

    Nearest rank (the smallest value with at least ``q`` of the values at or below it) gives a
    value that was observed, which makes a report checkable by hand.
    """
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _percentiles(values: list[int]) -> Percentiles:
    values.sort()
    return Percentiles(
        p50=percentile(values, 0.5), p95=percentile(values, 0.95), max=values[-1] if values else None, count=len(values)
    )


@dataclass
class _Tally:
    """The running figures of one group."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("runs", "pending", "missed", *FINAL_STATUSES), 0)
    )
    durations: list[int] = field(default_factory=list)
    lateness: list[int] = field(default_factory=list)

    def add(self, row: _Row) -> None:
        if row.status == "skipped":
            self.counts["missed"] += row.missed
            return
        self.counts["runs"] += 1
        if row.status in FINAL_STATUSES:
            self.counts[row.status] += 1
        elif row.status in PENDING_STATUSES:
            self.counts["pending"] += 1
        if row.duration_ms is not None:
            self.durations.append(row.duration_ms)
        if row.lateness_ms is not None:
            self.lateness.append(row.lateness_ms)

    def figures(self) -> ReportFigures:
        c = self.counts
        judged = c["succeeded"] + c["failed"] + c["timed_out"]
        return ReportFigures(
            **c,
            success_rate=c["succeeded"] / judged if judged else None,
            duration_ms=_percentiles(self.durations),
            lateness_ms=_percentiles(self.lateness),
        )


@dataclass(frozen=True)
class _Row:
    task_id: str
    status: str
    scheduled_for: datetime
    missed: int
    duration_ms: int | None
    lateness_ms: int | None


_MS = timedelta(milliseconds=1)


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _row(doc: Mapping[str, Any]) -> _Row | None:
    """The figures an execution document gives; None for one a report cannot place."""
    scheduled = _aware(doc.get("scheduled_for"))
    status = doc.get("status")
    if scheduled is None or not isinstance(status, str):
        return None
    if status == "skipped":
        missed = doc.get("missed_count")
        count = missed if isinstance(missed, int) and not isinstance(missed, bool) and missed > 0 else 1
        return _Row(str(doc.get("task_id")), status, scheduled, count, None, None)
    started = _aware(doc.get("started_at"))
    lateness = None if started is None else (started - scheduled) // _MS
    duration = doc.get("duration_ms") if status in FINAL_STATUSES else None
    return _Row(
        str(doc.get("task_id")), status, scheduled, 0, duration if isinstance(duration, int) else None, lateness
    )


@dataclass(frozen=True)
class TaskLabel:
    """What a report shows of a task: its public id, name and tags (as the tasks view holds them)."""

    public_id: str
    name: str | None
    tags: tuple[str, ...]


class ReportBuilder:
    """Folds execution documents into the figures of each group and the totals.

    ``labels`` maps internal task ids to their labels (needed to group by task or tag); ``zone``
    is where days are counted. Documents of another tenant are ignored (the query already
    filters by tenant; this is the second lock).
    """

    def __init__(self, tenant: str, group_by: GroupBy, zone: tzinfo, labels: Mapping[str, TaskLabel]) -> None:
        self.tenant = tenant
        self.group_by = group_by
        self.zone = zone
        self.labels = labels
        self.read = 0
        """Documents offered to :meth:`add` so far."""
        self._groups: dict[str | None, _Tally] = {}
        self._totals = _Tally()

    def add(self, doc: Mapping[str, Any]) -> None:
        """Count one ``executions`` document (a projection with :data:`ROW_FIELDS`)."""
        self.read += 1
        if doc.get("tenant") != self.tenant:
            return
        row = _row(doc)
        if row is None:
            return
        self._totals.add(row)
        for key in self._keys(row):
            tally = self._groups.get(key)
            if tally is None:
                tally = self._groups[key] = _Tally()
            tally.add(row)

    def _keys(self, row: _Row) -> Iterable[str | None]:
        label = self.labels.get(row.task_id)
        match self.group_by:
            case "task":
                return (label.public_id if label is not None else _public(self.tenant, row.task_id),)
            case "tag":
                return label.tags if label is not None and label.tags else (None,)
            case "day":
                return (row.scheduled_for.astimezone(self.zone).date().isoformat(),)

    def groups(self) -> list[ReportGroup]:
        """The figures of every group seen, ordered by key (the untagged group last)."""
        out: list[ReportGroup] = []
        for key in sorted(self._groups, key=lambda k: (k is None, k or "")):
            name = None
            if self.group_by == "task":
                label = self.labels.get(_internal(self.tenant, key or ""))
                name = label.name if label is not None else None
            figures = self._groups[key].figures()
            out.append(ReportGroup(key=key, name=name, **figures.model_dump()))
        return out

    def totals(self) -> ReportFigures:
        """The figures of every execution counted."""
        return self._totals.figures()


def _public(tenant: str, internal_id: str) -> str:
    prefix = f"{tenant}/"
    return internal_id[len(prefix) :] if internal_id.startswith(prefix) else internal_id


def _internal(tenant: str, public_id: str) -> str:
    return f"{tenant}/{public_id}"


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def prefers_csv(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks ``text/csv`` above JSON (RFC 9110 section 12.5.1).

    Each type takes the quality of its most specific matching range (``text/csv``, ``text/*``,
    ``*/*``); JSON wins ties, an absent header and anything unparsable.
    """
    if not accept:
        return False
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(1.0, max(0.0, float(value)))
                except ValueError:
                    quality = 0.0
        if media:
            ranges[media.lower()] = max(quality, ranges.get(media.lower(), 0.0))

    def quality_of(kind: str, sub: str) -> float:
        for media in (f"{kind}/{sub}", f"{kind}/*", "*/*"):
            if media in ranges:
                return ranges[media]
        return 0.0

    csv_q = quality_of("text", "csv")
    return csv_q > 0 and csv_q > quality_of("application", "json")


CSV_COLUMNS: tuple[str, ...] = (
    "key",
    "name",
    "runs",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "pending",
    "missed",
    "success_rate",
    "duration_p50_ms",
    "duration_p95_ms",
    "duration_max_ms",
    "lateness_p50_ms",
    "lateness_p95_ms",
    "lateness_max_ms",
)
"""The header row of a CSV report; one row per group follows."""


def safe_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @``, a tab or
    a carriage return gets a leading ``'`` (numbers are left alone: they are not text)."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def report_csv(groups: Iterable[ReportGroup]) -> str:
    """The report as RFC 4180 CSV: a header row (:data:`CSV_COLUMNS`), then one row per group.

    Quoting is the ``csv`` module's (minimal, CRLF line ends); an absent figure is an empty cell.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for g in groups:
        rate = None if g.success_rate is None else round(g.success_rate, 6)
        d, lat = g.duration_ms, g.lateness_ms
        row = (
            g.key,
            g.name,
            g.runs,
            g.succeeded,
            g.failed,
            g.timed_out,
            g.cancelled,
            g.pending,
            g.missed,
            rate,
            d.p50,
            d.p95,
            d.max,
            lat.p50,
            lat.p95,
            lat.max,
        )
        writer.writerow(["" if v is None else safe_cell(v) for v in row])
    return out.getvalue()
