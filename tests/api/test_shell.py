"""Issue 13, shell work at the API: a program, env variable or working directory the operator
does not allow is a 422 naming the field (``definition.work.argv[0]``, ``definition.work.env.X``,
``definition.work.cwd``), on create and on update, and nothing is written; malformed shell work
is a 422, never a 500. The executor checks again: work the API allows but the executor's
settings do not is a failed execution saying why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Keys, Running, Stack, _running, auth, new_tenant, settings_for


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    """A job directory with one program, ``report``."""
    (tmp_path / "jobs").mkdir()
    report = tmp_path / "jobs" / "report"
    report.write_text("#!/bin/sh\necho report\n")
    report.chmod(0o755)
    return tmp_path / "jobs"


@pytest.fixture
async def shell_api(warm: Stack, keys: Keys, jobs: Path) -> AsyncIterator[Running]:
    """The API of an operator who allows the job directory, ``REPORT_*`` variables and ``/tmp``
    (the session's worker allows no shell work at all)."""
    settings = settings_for(
        warm, keys, shell_commands=[f"{jobs}/*"], shell_env=["REPORT_*"], shell_cwd=[str(jobs.parent)]
    )
    async for running in _running(settings):
        yield running


def _task(jobs: Path, **work: Any) -> dict[str, Any]:
    return {"name": "nightly report", "work": {"kind": "shell", "argv": [f"{jobs}/report"], **work}}


@pytest.mark.parametrize(
    ("work", "field", "pointer", "says"),
    [
        ({"argv": ["/bin/sh", "-c", "id"]}, "definition.work.argv[0]", "#/work/argv/0", "not allowed for shell work"),
        ({"argv": ["{jobs}/../../bin/sh"]}, "definition.work.argv[0]", "#/work/argv/0", "not allowed for shell work"),
        ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "definition.work.env.LD_PRELOAD", "#/work/env/LD_PRELOAD", "may not"),
        ({"env": {"AWS_SECRET": "x"}}, "definition.work.env.AWS_SECRET", "#/work/env/AWS_SECRET", "SCHED_SHELL_ENV"),
        ({"cwd": "/etc"}, "definition.work.cwd", "#/work/cwd", "SCHED_SHELL_CWD"),
    ],
)
async def test_shell_work_the_operator_does_not_allow_is_refused_naming_the_field(
    shell_api: Running, jobs: Path, work: dict[str, Any], field: str, pointer: str, says: str
) -> None:
    tenant = new_tenant()
    if "argv" in work:
        work = {**work, "argv": [a.format(jobs=jobs) for a in work["argv"]]}
    r = await shell_api.http.post("/v1/tasks", json=_task(jobs, **work), headers=auth(tenant))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    [error] = r.json()["errors"]
    assert (error["field"], error["pointer"]) == (field, pointer) and says in error["message"], error
    # Nothing was written: the tenant has no task.
    assert (await shell_api.http.get("/v1/tasks", headers=auth(tenant))).json()["items"] == []


async def test_the_update_path_is_fenced_the_same_way(shell_api: Running, jobs: Path) -> None:
    tenant = new_tenant()
    r = await shell_api.http.post(
        "/v1/tasks?wait=20", json=_task(jobs, env={"REPORT_DAY": "mon"}), headers=auth(tenant)
    )
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await shell_api.http.put(
        f"/v1/tasks/{task_id}", json=_task(jobs, argv=["/usr/bin/python3"]), headers=auth(tenant)
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "definition.work.argv[0]", r.text
    # The accepted task is as it was.
    r = await shell_api.http.get(f"/v1/tasks/{task_id}", headers=auth(tenant))
    assert r.json()["revision"] == 1 and r.json()["definition"]["work"]["env"] == {"REPORT_DAY": "mon"}


async def test_by_default_shell_work_is_refused(api: Running) -> None:
    body = {"name": "t", "work": {"kind": "shell", "argv": ["/bin/true"]}}
    r = await api.http.post("/v1/tasks", json=body, headers=auth(new_tenant()))
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == "definition.work.argv[0]" and "SCHED_SHELL_COMMANDS" in error["message"]


@pytest.mark.parametrize(
    ("work", "field"),
    [
        ({"argv": []}, "definition.work.argv"),
        ({"argv": ["/bin/true", "a\u0000b"]}, "definition.work.argv"),
        ({"argv": ["/bin/true"], "env": {"BAD NAME": "x"}}, "definition.work.env"),
        ({"argv": ["/bin/true"], "cwd": "relative"}, "definition.work.cwd"),
        ({"argv": ["/bin/true"], "limits": {"memory_mb": 1}}, "definition.work.limits.memory_mb"),
        ({"argv": ["/bin/true"], "success_exit_codes": [-1]}, "definition.work.success_exit_codes"),
    ],
)
async def test_malformed_shell_work_is_a_422_naming_the_field(
    shell_api: Running, work: dict[str, Any], field: str
) -> None:
    r = await shell_api.http.post(
        "/v1/tasks", json={"name": "t", "work": {"kind": "shell", **work}}, headers=auth(new_tenant())
    )
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field], r.text


async def test_a_sensitive_env_value_is_never_shown(shell_api: Running, jobs: Path) -> None:
    tenant = new_tenant()
    body = _task(jobs, env={"REPORT_TOKEN": "s3cret-value"}, sensitive_env=["REPORT_TOKEN"])
    r = await shell_api.http.post("/v1/tasks?wait=20", json=body, headers=auth(tenant))
    assert r.status_code == 200, r.text
    assert "s3cret-value" not in r.text
    r = await shell_api.http.get(f"/v1/tasks/{r.json()['task_id']}", headers=auth(tenant))
    assert r.json()["definition"]["work"]["env"] == {"REPORT_TOKEN": "***"}


async def test_work_the_api_allows_but_the_executor_does_not_fails_saying_why(shell_api: Running, jobs: Path) -> None:
    # The session's worker has no SCHED_SHELL_COMMANDS: its executor refuses what this API allowed.
    tenant = new_tenant()
    r = await shell_api.http.post("/v1/tasks?wait=20", json=_task(jobs), headers=auth(tenant))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await shell_api.http.post(f"/v1/tasks/{task_id}/trigger?wait=20", headers=auth(tenant))
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while True:
        items = (await shell_api.http.get(f"/v1/tasks/{task_id}/executions", headers=auth(tenant))).json()["items"]
        if items and items[0]["status"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, "the execution never finished"
        await asyncio.sleep(0.2)
    assert items[0]["status"] == "failed", items[0]
    assert items[0]["error"].startswith("shell work refused: argv[0]: shell work is not allowed"), items[0]
