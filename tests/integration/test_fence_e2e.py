"""Issue 11, server-side request forgery, end to end: a worker with the fence's defaults (no
network allowed) runs HTTP work aimed at 127.0.0.1 and at a name resolving to it; each
execution fails with the fence's reason and the target receives nothing. (With the allow-list
set, as in every other end-to-end test, the same target is reached.)"""

from __future__ import annotations

import uuid

import pytest

from schemas.commands import CreateTask, TriggerTask
from schemas.specs import HttpWork, TaskDefinition
from tests.integration.harness import Bus, HttpTarget, new_id, now

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"fence{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker_settings() -> dict[str, str]:
    return {"SCHED_HTTP_ALLOW_NETWORKS": "[]"}  # the deployment default: no internal network allowed


def _create(task_id: str, definition: TaskDefinition) -> CreateTask:
    return CreateTask(
        command_id=new_id(), task_id=task_id, tenant="acme", actor="tests", at=now(), definition=definition
    )


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "address 127.0.0.1 is loopback; not allowed for HTTP work"),
        ("localhost", "(localhost) is loopback; not allowed for HTTP work"),
    ],
)
async def test_http_work_cannot_reach_loopback(bus: Bus, target: HttpTarget, host: str, reason: str) -> None:
    task_id = f"acme/{new_id()}"
    url = target.url.replace("127.0.0.1", host).replace("/work", "/metrics")
    await bus.send(_create(task_id, TaskDefinition(name="ssrf", work=HttpWork(method="GET", url=url))))
    await bus.send(
        TriggerTask(command_id=new_id(), task_id=task_id, tenant="acme", actor="tests", at=now(), trigger_id="go")
    )
    await bus.wait_for(
        lambda: bool(bus.events(task_id, "ExecutionCompleted", topic="outcomes")), 30, "the execution to end"
    )
    [completed] = bus.events(task_id, "ExecutionCompleted", topic="outcomes")
    assert completed.status == "failed"
    assert completed.error is not None and reason in completed.error, completed.error
    assert completed.result is None  # nothing of the target's answer reached the views
    assert target.requests == []
