"""``/v1/executions``: one execution, and cancelling it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Response

from api.commands import check_idempotency_key, command_id_for, execution_public, now, submit
from api.deps import IdempotencyKey, Operator, State, Viewer, Wait
from api.errors import ERROR_RESPONSES, NotFound, problem_responses
from api.models import CancelRequest, CommandResult, ExecutionPublic
from schemas.commands import CancelExecution

router = APIRouter(prefix="/v1/executions", tags=["executions"], responses=ERROR_RESPONSES)

ExecutionId = Annotated[str, Path(description="The execution's id.", max_length=200)]


@router.get("/{execution_id}", summary="Get an execution", responses=problem_responses(404))
async def get_execution(state: State, principal: Viewer, execution_id: ExecutionId) -> ExecutionPublic:
    """One execution with its status timeline."""
    doc = await state.views.execution(principal.tenant, execution_id)
    if doc is None:
        raise NotFound(f"execution {execution_id!r} not found")
    return execution_public(doc, principal.tenant)


@router.post(
    "/{execution_id}/cancel",
    status_code=202,
    summary="Cancel an execution",
    responses={
        200: {"model": CommandResult, "description": "Applied (with `?wait`)"},
        **problem_responses(400, 404, 413),
    },
)
async def cancel_execution(
    state: State,
    principal: Operator,
    execution_id: ExecutionId,
    response: Response,
    body: Annotated[
        CancelRequest | None, Body(openapi_examples={"reason": {"value": {"reason": "wrong parameters"}}})
    ] = None,
    wait: Wait = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandResult:
    """Cancel an execution that is in flight, waiting for a retry, or buffered. Needs the operator role.

    An execution that already finished is a 404 once the task processor rejects it (with `?wait`).
    """
    key = check_idempotency_key(idempotency_key)
    doc = await state.views.execution(principal.tenant, execution_id)
    if doc is None:
        raise NotFound(f"execution {execution_id!r} not found")
    command = CancelExecution(
        command_id=command_id_for(principal.tenant, "cancel", execution_id, key),
        task_id=str(doc["task_id"]),
        tenant=principal.tenant,
        actor=principal.actor,
        at=now(),
        execution_id=execution_id,
        reason=body.reason if body else None,
    )
    return await submit(state, principal, command, response, wait=wait, execution_id=execution_id, idempotency_key=key)
