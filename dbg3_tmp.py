import time, uuid
from datetime import datetime, UTC, timedelta
from scheduler import decide, evolve
from schemas.commands import CreateTask, Wake, ReportExecutionOutcome
from schemas.specs import *
from streams.app import Stored
from schemas.envelope import encode, event_envelope, decode_command, command_envelope
t0 = datetime(2026,1,1,tzinfo=UTC)
c = CreateTask(command_id="c1", task_id="t1", tenant="a", actor="x", at=t0, definition=TaskDefinition(name="n", schedule=IntervalSchedule(every_seconds=1, anchor=t0), work=HandlerWork(name="noop")))
s=None
for e in decide(c, s): s = evolve(s, e)
N=2000
st=time.perf_counter()
for i in range(N):
    w = Wake(command_id=str(uuid.uuid4()), task_id="t1", tenant="a", actor="system", at=t0+timedelta(seconds=i+1, milliseconds=1))
    raw = encode(command_envelope(w, "x"))
    cmd = decode_command(raw)
    evs = decide(cmd, s)
    for e in evs: s = evolve(s, e)
    blob = Stored(s, evs, 0).dump()
    s2 = Stored.load(blob).state
    for e in evs: encode(event_envelope(e, "x", None))
    # complete the execution
    ex = [e for e in evs if e.type=="ExecutionDispatched"]
    if ex:
        o = ReportExecutionOutcome(command_id=str(uuid.uuid4()), task_id="t1", tenant="a", actor="e", at=t0+timedelta(seconds=i+1, milliseconds=5), execution_id=ex[0].execution_id, attempt=1, worker="w", status="succeeded", started_at=t0+timedelta(seconds=i+1, milliseconds=2), finished_at=t0+timedelta(seconds=i+1, milliseconds=4))
        for e in decide(o, s): s = evolve(s, e)
el=time.perf_counter()-st
print(f"{el/N*1000:.3f} ms per wake+outcome cycle; blob {len(blob)} bytes; state events {s.version}")
import cProfile, pstats
