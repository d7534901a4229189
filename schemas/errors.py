"""The one error hierarchy of the wire format.

Decoding is the only place the wire layer raises: business rejections are
``CommandRejected`` events produced by the decider, never exceptions.
"""

from __future__ import annotations

from datetime import datetime


class DecodeError(Exception):
    """A message could not be decoded into a command or event.

    :param reason: human-readable explanation.
    :param field: dotted path of the offending field, or None when the message as a whole is bad.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


class InvalidCommand(DecodeError):
    """A command whose envelope is valid but whose body fails validation.

    Carries enough of the envelope for the stream shell to answer with a ``CommandRejected``
    event (see :func:`scheduler.decider.reject_invalid`) instead of dead-lettering it.
    """

    def __init__(
        self,
        reason: str,
        field: str | None,
        *,
        task_id: str,
        tenant: str,
        actor: str,
        command_id: str,
        command_type: str,
        at: datetime,
    ) -> None:
        super().__init__(reason, field)
        self.task_id = task_id
        self.tenant = tenant
        self.actor = actor
        self.command_id = command_id
        self.command_type = command_type
        self.at = at
