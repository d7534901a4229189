"""``/v1/stats``: the caller's tenant's statistics."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import State, Viewer
from api.errors import ERROR_RESPONSES
from api.models import StatsPublic

router = APIRouter(prefix="/v1", tags=["stats"], responses=ERROR_RESPONSES)


@router.get("/stats", summary="Tenant statistics")
async def get_stats(state: State, principal: Viewer) -> StatsPublic:
    """Execution counters (overall and by work kind, with duration histograms) and tasks per status."""
    return StatsPublic.model_validate(await state.views.stats(principal.tenant))
