"""Deterministic ids: the fast uuid5 is the standard one, to the character (schemas/ids.py).
Ids already written (executions, events) must never change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from schemas.ids import event_id, execution_id_for_slot, uuid5_text


@given(st.uuids(), st.text())
def test_uuid5_text_is_the_standard_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_ids_already_issued_stay_the_same() -> None:
    # Written before the fast uuid5: an execution's id is its Idempotency-Key at the target.
    slot = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    # The values uuid.uuid5(NAMESPACE, ...) gave, pinned.
    assert execution_id_for_slot("acme/nightly", slot) == "804f8e2a-e574-59c5-ae97-c055868d4bb8"
    assert event_id("acme/nightly", 7) == "b0fdb42f-7260-5bd2-aedb-9eed450e91a2"
