"""The occurrence log: every slot of a task's schedule in a range, each with exactly one fate.

Pure: no clock (``now`` comes in), no I/O. The inputs are what the events recorded, already
read into plain values by the shell:

* :class:`Segment` - a stretch of the task's life under one definition: from a
  ``TaskCreated`` or ``TaskUpdated`` (its first slot is the event's ``next_slot``) up to the
  next update, the completion or the deletion. A segment knows the last slot of it that was
  *handled* (run, buffered or recorded missed), so a slot after it is not due yet, pending, or
  dropped by a deletion, and a slot before it without a fact is an error (``unaccounted``).
* :class:`RunFact` - an execution of a slot (dispatched or buffered), with attempts and outcome.
* :class:`MissedFact` - a ``SlotsMissed`` range: contiguous slots of the schedule, one reason.

The slots themselves come from a *slot source* (:data:`SlotSource`): by default
:func:`policy_slots`, which lists a cron schedule's wall times with what its DST policy did to
each (:func:`scheduler.schedule.occurrences`: ``shifted``, ``skipped``, ``first``, ``second``),
and walks other schedules with :func:`scheduler.schedule.next_slot` (:func:`schedule_slots`).
Any source yielding :class:`ScheduledSlot` in order can be passed in instead.

Fates (:data:`FATES`), decided in this order for each slot:

1. ``skipped_dst``: the slot source says the DST policy skipped this wall time (no slot);
2. ``fired``: an execution of the slot was dispatched (``outcome``: its final status, or
   ``running``); ``buffered``: it waits behind a running execution (overlap ``buffer_one``),
   or was cancelled while waiting;
3. ``missed``: a ``SlotsMissed`` range holds it (``reason`` as recorded: catch-up, overlap,
   superseded, calendar, ... any reason a newer writer records);
4. ``unaccounted``: the slot was handled (it is not after the segment's last handled slot)
   but no fact explains it. Never expected; a property test checks it never happens;
5. ``not_run``: the task was deleted before the slot was handled (``reason`` ``task_deleted``);
6. ``pending``: due (its fire time has passed) but not handled yet: ``reason`` ``paused``
   (the catch-up policy decides on resume), ``held`` (overlap ``skip`` or ``buffer_one``: an
   execution dispatched before the slot was due is still running, and its outcome decides the
   slot) or ``due`` (the worker is about to, or is down);
7. ``not_yet_due``: its fire time is still ahead.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, get_args

from scheduler.schedule import fire_at, next_slot, occurrences
from schemas._types import iana_zone
from schemas.specs import CronSchedule, OverlapPolicy, TaskDefinition

_MICROSECOND = timedelta(microseconds=1)

Fate = Literal["fired", "buffered", "missed", "skipped_dst", "pending", "not_yet_due", "not_run", "unaccounted"]
"""What happened to a slot (see the module docstring)."""
FATES: tuple[Fate, ...] = get_args(Fate)
"""Every fate, in the order they are decided."""

PRIMARY_RUN_REASONS = frozenset({"schedule", "buffered"})
"""Dispatch reasons of the execution that *is* a slot's fate; runs of a slot for any other
reason (a backfill, say) are listed with it as ``reruns``."""
RERUN_REASONS = frozenset({"backfill"})
"""Dispatch reasons that are only ever ``reruns`` of a slot, never its fate."""


@dataclass(frozen=True)
class ScheduledSlot:
    """One occurrence of a schedule, as a slot source yields it."""

    slot: datetime | None
    """The nominal slot (the execution's identity); None when the DST policy skipped the wall time."""
    at: datetime
    """Where the occurrence sits in time (the slot; for a skipped wall time, where it would have
    been): what ranges, ordering and cursors use."""
    wall: datetime | None = None
    """The local wall time (cron schedules), naive, when the source knows it."""
    dst: str | None = None
    """A daylight-saving note from the source (``shifted``, ``skipped``, ``first``, ``second``)."""


@dataclass(frozen=True)
class Segment:
    """A stretch of the task's life under one definition (see the module docstring)."""

    seq: int
    """Sequence of the ``TaskCreated`` / ``TaskUpdated`` that began it."""
    task_id: str
    definition: TaskDefinition
    """The definition in effect (only its schedule, bounds and jitter matter here)."""
    anchor: datetime
    """The interval anchor the decider used (see :func:`scheduler.schedule.anchor_for`)."""
    first_slot: datetime | None
    """The event's ``next_slot``: the first slot of the segment (None: it has none)."""
    handled_until: datetime | None
    """The last slot handled so far (for a closed segment: when it closed); None: none yet.
    Task-wide, so it may be before ``first_slot``: then nothing of this segment was handled."""
    until: datetime | None
    """The last instant a slot of this segment can be at (inclusive); None while open."""
    unhandled: str
    """What a slot after ``handled_until`` is: ``task_deleted`` (fate ``not_run``), else the
    reason of a due slot's ``pending`` fate (``paused`` or ``due``; ``due`` becomes ``held``
    while an execution holds the slot, see :func:`fate`)."""


@dataclass(frozen=True)
class RunFact:
    """An execution of a slot, as the events recorded it."""

    slot: datetime
    execution_id: str
    reason: str | None
    """The dispatch reason of its first attempt (``schedule``, ``buffered``, or newer ones)."""
    attempts: int
    status: str | None
    """The final status; None while it has not ended."""
    dispatched_at: datetime | None
    """When its first attempt was dispatched; None while (or if only ever) buffered."""


@dataclass(frozen=True)
class MissedFact:
    """A ``SlotsMissed`` range."""

    first_slot: datetime
    last_slot: datetime
    count: int
    reason: str
    calendar: str | None = None
    truncated: bool = False


@dataclass(frozen=True)
class Rerun:
    """Another execution of a slot that already has its fate (e.g. a backfill)."""

    execution_id: str
    reason: str | None
    attempts: int
    outcome: str


@dataclass(frozen=True)
class Occurrence:
    """One line of the log: a slot and its one fate."""

    at: datetime
    slot: datetime | None
    fate: Fate
    fire_at: datetime | None = None
    """When the slot was due to fire, when jitter moved it off the slot."""
    wall: datetime | None = None
    dst: str | None = None
    reason: str | None = None
    """Why: the missed reason, the pending reason, ``task_deleted``, or the run's dispatch reason."""
    calendar: str | None = None
    execution_id: str | None = None
    attempts: int | None = None
    outcome: str | None = None
    """A run's final status, ``running`` while it runs, ``waiting`` while buffered."""
    dispatched_at: datetime | None = None
    reruns: tuple[Rerun, ...] = ()


HOLDING_POLICIES = frozenset({OverlapPolicy.SKIP, OverlapPolicy.BUFFER_ONE})
"""Overlap policies under which a running execution holds the slots that fall due meanwhile."""


@dataclass
class Facts:
    """The facts of one task, indexed for lookups by slot."""

    runs: dict[datetime, list[RunFact]] = field(default_factory=dict)
    missed: list[MissedFact] = field(default_factory=list)
    _firsts: list[datetime] = field(default_factory=list)
    running_since: datetime | None = None
    """When the earliest execution still running was dispatched; None: none is running."""

    @classmethod
    def of(cls, runs: Iterable[RunFact], missed: Iterable[MissedFact]) -> Facts:
        """Index ``runs`` by slot and sort ``missed`` by first slot."""
        facts = cls()
        for run in runs:
            facts.runs.setdefault(run.slot, []).append(run)
        for slot_runs in facts.runs.values():
            slot_runs.sort(key=lambda r: (r.reason not in PRIMARY_RUN_REASONS, r.execution_id))
        running = [r.dispatched_at for rs in facts.runs.values() for r in rs if r.status is None and r.dispatched_at]
        facts.running_since = min(running, default=None)
        facts.missed = sorted(missed, key=lambda m: (m.first_slot, m.last_slot))
        facts._firsts = [m.first_slot for m in facts.missed]
        return facts

    def missed_at(self, slot: datetime) -> MissedFact | None:
        """The missed range holding ``slot``, if any (ranges never overlap)."""
        i = bisect.bisect_right(self._firsts, slot)
        if i and self.missed[i - 1].last_slot >= slot:
            return self.missed[i - 1]
        return None


SlotSource = Callable[[Segment, datetime, datetime], Iterable[ScheduledSlot]]
"""Slots of a segment's schedule with ``at`` in ``[start, end)``, in order, none before the
segment's first slot (the segment's ``until`` is applied by the caller)."""


def schedule_slots(segment: Segment, start: datetime, end: datetime) -> Iterator[ScheduledSlot]:
    """The default slot source: the segment's slots from ``start`` (inclusive) to ``end``.

    The chain the decider walks is ``first_slot``, then ``next_slot`` of each; ``next_slot``
    strictly after any instant at or past ``first_slot`` lands on that chain, so the walk can
    start anywhere. ``max_runs`` is left out here: a run limit ends the segment (``until``).
    """
    first = segment.first_slot
    if first is None or first >= end:
        return
    slot: datetime | None = first
    if first < start:
        slot = next_slot(segment.definition, start - _MICROSECOND, anchor=segment.anchor)
    while slot is not None and slot < end:
        yield ScheduledSlot(slot=slot, at=slot)
        slot = next_slot(segment.definition, slot, anchor=segment.anchor)


def policy_slots(segment: Segment, start: datetime, end: datetime) -> Iterator[ScheduledSlot]:
    """The default slot source: a cron segment's wall times from ``start`` (inclusive) to
    ``end``, each with what daylight saving did to it, the ones its DST policy does not fire
    included (``slot`` None, placed where they would have fired); other schedules as
    :func:`schedule_slots`. Honours the definition's ``start_at`` and ``end_at``; ``max_runs``
    ends the segment (``until``), as there."""
    definition = segment.definition
    schedule = definition.schedule
    first = segment.first_slot
    if not isinstance(schedule, CronSchedule):
        yield from schedule_slots(segment, start, end)
        return
    if first is None or first >= end:
        return
    lower = max(start, first, definition.start_at or first)
    upper = end if definition.end_at is None else min(end, definition.end_at + _MICROSECOND)
    if upper <= lower:
        return
    zone = iana_zone(schedule.timezone)
    for occurrence in occurrences(schedule, lower - _MICROSECOND, upper - _MICROSECOND, anchor=segment.anchor):
        at = occurrence.slot
        if at is None and occurrence.wall is not None:
            # Where it would have fired: a gap time at its shifted instant, a repeated time at
            # the occurrence the policy left out.
            fold = 1 if occurrence.dst == "second" else 0
            at = occurrence.wall.replace(tzinfo=zone, fold=fold).astimezone(first.tzinfo)
        if at is not None:
            yield ScheduledSlot(slot=occurrence.slot, at=at, wall=occurrence.wall, dst=occurrence.dst)


@dataclass(frozen=True)
class Position:
    """Where a page ends: after the ``count``-th occurrence at ``at`` (ties are possible when
    a source yields a skipped wall time where a slot also is)."""

    at: datetime
    count: int


@dataclass(frozen=True)
class Window:
    """Slots of a page, each with its segment, and where the next page starts (None: last)."""

    slots: list[tuple[Segment, ScheduledSlot]]
    next: Position | None


def window(
    segments: Sequence[Segment],
    start: datetime,
    end: datetime,
    *,
    limit: int,
    after: Position | None = None,
    source: SlotSource = policy_slots,
) -> Window:
    """Up to ``limit`` slots of ``segments`` (in order) with ``at`` in ``[start, end)``, after
    ``after``. Each slot belongs to exactly one segment: a segment's slots stop at its ``until``.

    Bounded: at most ``limit + 1`` slots (plus the ties ``after`` skips) are drawn from the
    source, however wide the range.
    """
    lower, skip = start, 0
    if after is not None and after.at >= start:
        lower, skip = after.at, after.count
    skipped = skip
    out: list[tuple[Segment, ScheduledSlot]] = []
    for segment in segments:
        if len(out) > limit:
            break
        if segment.first_slot is None:
            continue
        upper = end if segment.until is None else min(end, segment.until + _MICROSECOND)
        if upper <= lower:
            continue
        for occurrence in source(segment, lower, upper):
            if not lower <= occurrence.at < upper:
                continue
            if skip and occurrence.at == lower:
                skip -= 1
                continue
            out.append((segment, occurrence))
            if len(out) > limit:
                break
    if len(out) <= limit:
        return Window(out, None)
    page = out[:limit]
    last = page[-1][1].at
    ties = sum(1 for _, o in page if o.at == last) + (skipped if last == lower else 0)
    return Window(page, Position(last, ties))


def fate(segment: Segment, occurrence: ScheduledSlot, facts: Facts, now: datetime) -> Occurrence:
    """The one fate of ``occurrence`` (a slot of ``segment``) given the task's facts."""
    # "unaccounted" is a placeholder here: every path below decides the fate.
    base = Occurrence(occurrence.at, occurrence.slot, "unaccounted", wall=occurrence.wall, dst=occurrence.dst)
    slot = occurrence.slot
    if slot is None:
        return replace(base, fate="skipped_dst", reason=occurrence.dst or "skipped")
    due = fire_at(segment.task_id, segment.definition, slot)
    moved = due if due != slot else None
    runs = facts.runs.get(slot, [])
    primary = next((r for r in runs if r.reason in PRIMARY_RUN_REASONS), None)
    missed = facts.missed_at(slot)
    if primary is None and missed is None:
        # A run for a reason this code does not know yet still explains the slot; a backfill
        # never does: it reran the slot later, whatever the schedule did with it then.
        primary = next((r for r in runs if r.reason not in RERUN_REASONS), None)
    reruns = tuple(_rerun(r) for r in runs if r is not primary)
    if primary is not None:
        ran = primary.dispatched_at is not None
        outcome = primary.status or ("running" if ran else "waiting")
        return replace(
            base,
            fate="fired" if ran else "buffered",
            fire_at=moved,
            reason=primary.reason,
            execution_id=primary.execution_id,
            attempts=primary.attempts,
            outcome=outcome,
            dispatched_at=primary.dispatched_at,
            reruns=reruns,
        )
    if missed is not None:
        return replace(
            base, fate="missed", fire_at=moved, reason=missed.reason, calendar=missed.calendar, reruns=reruns
        )
    if segment.handled_until is not None and slot <= segment.handled_until:
        return replace(base, fate="unaccounted", fire_at=moved)
    if segment.unhandled == "task_deleted":
        return replace(base, fate="not_run", fire_at=moved, reason="task_deleted")
    if due <= now:
        reason = segment.unhandled
        held = facts.running_since is not None and facts.running_since <= due
        if reason == "due" and held and segment.definition.overlap in HOLDING_POLICIES:
            reason = "held"
        return replace(base, fate="pending", fire_at=moved, reason=reason)
    return replace(base, fate="not_yet_due", fire_at=moved)


def build(slots: Iterable[tuple[Segment, ScheduledSlot]], facts: Facts, now: datetime) -> list[Occurrence]:
    """The log of ``slots`` (e.g. a :class:`Window`'s): one :class:`Occurrence` each, in order."""
    return [fate(segment, occurrence, facts, now) for segment, occurrence in slots]


def _rerun(run: RunFact) -> Rerun:
    ran = run.dispatched_at is not None
    return Rerun(run.execution_id, run.reason, run.attempts, run.status or ("running" if ran else "waiting"))
