"""The Kafka side of the API: putting commands on the ``commands`` topic, and checking the brokers.

A command is accepted only once Kafka acknowledged it (``acks=all``) within a bounded time;
anything else raises :class:`~api.errors.ServiceUnavailable`. The producer is started lazily
and restarted after a failure, so the API starts (and serves reads) while Kafka is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from api import correlation
from api.errors import ServiceUnavailable
from api.settings import ApiSettings
from schemas.commands import CommandBase
from schemas.envelope import command_envelope, encode
from streams.connections import kafka_options, track_topics

log = logging.getLogger(__name__)

SOURCE = "/scheduler/api"
"""CloudEvents ``source`` of the commands the API produces."""


class CommandBus:
    """Produces commands keyed by task id; one producer per process."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    def _unavailable(self, why: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"Kafka is unreachable ({why}); the command was not accepted",
                                  retry_after=self._settings.retry_after_seconds)  # fmt: skip

    async def start(self) -> None:
        """Start the producer if Kafka answers; otherwise leave it for the next command."""
        with contextlib.suppress(ServiceUnavailable):
            await self._ensure()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            timeout_ms = int(self._settings.kafka_send_timeout_seconds * 1000)
            producer = AIOKafkaProducer(
                **kafka_options(self._settings),
                acks="all",
                enable_idempotence=True,
                # A batch not delivered within the send timeout expires instead of lingering and
                # being delivered after the client was told 503.
                request_timeout_ms=timeout_ms,
                linger_ms=0,
                client_id="scheduler-api",
            )
            try:
                await asyncio.wait_for(producer.start(), self._settings.kafka_connect_timeout_seconds)
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("kafka producer could not start: %r", exc)
                raise self._unavailable(type(exc).__name__) from None
            await track_topics(self._settings.topics.all, producer)
            self._producer = producer
            return producer

    async def send(self, command: CommandBase) -> None:
        """Put ``command`` on the commands topic; returns once Kafka acknowledged it.

        :raises ServiceUnavailable: Kafka did not acknowledge within the send timeout. The
            command may still arrive later; a retry with the same ``Idempotency-Key`` is
            deduplicated by the task processor.
        """
        # The request's id (X-Request-Id) correlates the command and every event it causes.
        value = encode(command_envelope(command, source=SOURCE, correlation_id=correlation.current.get()))
        await self.publish(self._settings.commands_topic, command.task_id.encode(), value, what=command.command_id)

    async def publish(self, topic: str, key: bytes, value: bytes, *, what: str) -> None:
        """Put one message on ``topic``; returns once Kafka acknowledged it (``what`` names it in logs).

        :raises ServiceUnavailable: Kafka did not acknowledge within the send timeout.
        """
        producer = await self._ensure()
        try:
            await asyncio.wait_for(
                producer.send_and_wait(topic, key=key, value=value), self._settings.kafka_send_timeout_seconds
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("%s not acknowledged: %r", what, exc)
            raise self._unavailable(type(exc).__name__) from None

    async def ready(self) -> str | None:
        """None when the brokers answer and the commands topic exists, else what is wrong."""
        try:
            producer = await self._ensure()
            metadata = await asyncio.wait_for(
                producer.client.fetch_all_metadata(), self._settings.kafka_connect_timeout_seconds
            )
        except ServiceUnavailable as exc:
            return str(exc.detail)
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"Kafka metadata unavailable ({type(exc).__name__})"
        if self._settings.commands_topic not in metadata.topics():
            return f"topic {self._settings.commands_topic!r} does not exist"
        return None

    async def close(self) -> None:
        """Flush and stop the producer."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()
