"""``/v1/stats``: the caller's tenant's statistics, and the report figures of a recent range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from pydantic import ConfigDict

from api.deps import State, Viewer
from api.errors import ERROR_RESPONSES, FieldError, Unprocessable
from api.models import StatsPublic
from api.reports import StatsWindow
from api.routes.reports import UtcInstant, build_report, check_range

router = APIRouter(prefix="/v1", tags=["stats"], responses=ERROR_RESPONSES)

DEFAULT_WINDOW = timedelta(hours=24)
"""The range of ``window`` when none is asked for: the last 24 hours."""


class StatsWithWindow(StatsPublic):
    """The tenant's statistics, and the report figures of its executions over a range."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    window: StatsWindow
    """Runs, outcomes, missed slots, success rate, duration and lateness percentiles of the
    executions scheduled in ``[from, to)`` (as ``GET /v1/reports`` computes them)."""


@router.get("/stats", summary="Tenant statistics")
async def get_stats(
    state: State,
    principal: Viewer,
    start: Annotated[
        UtcInstant | None,
        Query(alias="from", description="Start of `window` (included); default 24 hours before `to`."),
    ] = None,
    end: Annotated[UtcInstant | None, Query(alias="to", description="End of `window` (excluded); default now.")] = None,
) -> StatsWithWindow:
    """Execution counters (overall and by work kind, with duration histograms), tasks per status
    since the start, and in `window` the report figures of the executions of a range."""
    end = end or datetime.now(UTC)
    if start is None:
        if end - datetime.min.replace(tzinfo=UTC) < DEFAULT_WINDOW:
            message = "must be at least 24 hours after 0001-01-01T00:00:00Z without from"
            raise Unprocessable(f"to: {message}", errors=[FieldError(field="to", message=message)])
        start = end - DEFAULT_WINDOW
    check_range(start, end, state.settings.report_max_span_days)
    builder = await build_report(state, principal.tenant, start, end, group_by="day", zone=ZoneInfo("UTC"))
    counters = await state.views.stats(principal.tenant)
    window = StatsWindow(from_=start, to=end, figures=builder.totals())
    return StatsWithWindow.model_validate({**counters, "window": window})
