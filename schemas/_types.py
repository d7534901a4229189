"""Shared annotated types and model configuration for the wire models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
"""Earliest instant accepted on the wire."""
SECRET_TOKEN_PREFIX = "enc:v1:"  # nosec B105  # a format marker, not a password
"""Start of every sealed secret (see ``schemas.secrets``); here so that models which must
recognise a sealed value need not import the module that seals it."""
SECRET_MARKER = "***"  # nosec B105  # a placeholder shown instead of a secret, not a password
"""What readers see instead of a secret; in an update it means "keep the stored secret"."""

LATEST = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
"""Latest instant accepted on the wire."""


def _aware_utc(value: datetime, info: ValidationInfo) -> datetime:
    """Reject naive datetimes and normalise aware ones to UTC."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        name = (info.field_name or "datetime").rstrip("_")  # from_ is "from" on the wire
        raise ValueError(f"{name} must be timezone-aware (e.g. '2026-01-01T00:00:00Z'); got a naive datetime")
    utc = value.astimezone(UTC)
    # Bounded so that adding timeouts, intervals and jitter can never overflow datetime.
    if not EARLIEST <= utc <= LATEST:
        name = (info.field_name or "datetime").rstrip("_")  # from_ is "from" on the wire
        raise ValueError(f"{name} must be between 1970-01-01 and 2999-12-31 (UTC)")
    return utc


def iana_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; a ValueError saying so when there is none.

    A name that is a directory of the zone database (``Europe``) or not a path at all raises an
    OSError from zoneinfo, not ZoneInfoNotFoundError; both are "unknown" to a user.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown IANA time zone {name!r}") from None


UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]
"""A timezone-aware datetime, normalised to UTC. Naive input is rejected naming the field."""


class WireModel(BaseModel):
    """Base of every wire model: immutable, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)
