"""Wire format of the scheduler: commands, events, specs and the CloudEvents envelope.

Everything that crosses a process boundary is one of these pydantic v2 models, encoded with
orjson inside an :class:`~schemas.envelope.Envelope`. The JSON Schema files under
``schemas/json/v1`` are generated from them (``python -m schemas.export``) and are the
published contract for outside consumers.
"""

SCHEMA_VERSION = 1
"""Version of the wire format; carried on every envelope as ``schemaversion``."""
