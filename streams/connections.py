"""Connection options of every Kafka and MongoDB client, from the settings, in one place.

Each process creates its clients with ``**kafka_options(settings)`` (aiokafka producer,
consumer, admin), ``faust_options(settings)`` (the worker's Faust app) or
``**mongo_options(settings)`` (pymongo), so TLS and SASL are configured once for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka.cluster import ClusterMetadata
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from streams.settings import Settings

log = logging.getLogger(__name__)

TRACK_TIMEOUT_SECONDS = 5.0
"""How long :func:`track_topics` waits for the broker before leaving a client as it was."""


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of Kafka connections, or None when the protocol does not use TLS."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``:
    the bootstrap servers, the metadata refresh, the security protocol, TLS context and SASL
    credentials."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.metadata_max_age_seconds is not None:
        options["metadata_max_age_ms"] = int(settings.metadata_max_age_seconds * 1000)
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=None if password is None else password.get_secret_value(),
        )
    return options


def kafka_client(client: Any) -> Any:
    """The ``AIOKafkaClient`` of an aiokafka producer (``client``), consumer or admin client
    (``_client``)."""
    return getattr(client, "client", None) or client._client


async def track_topics(topics: Iterable[str], *clients: Any) -> None:
    """Make started aiokafka producers, consumers or admin clients refresh the metadata of
    ``topics`` only (one question to the broker for all of them).

    An aiokafka client that tracks no topic asks the broker for the metadata of every topic at
    each refresh (``metadata_max_age_ms``), and decodes it in Python: 100-280 ms for 3,856
    topics on the development machine (BENCHMARKS.md, stop 20), a stall of a busy worker at
    every refresh. Admin clients track none, and neither does a producer whose first sends
    found their topics in metadata fetched before. A topic sent to later that is not tracked
    is added by aiokafka when it is first missing.

    Only topics that exist are tracked: aiokafka names its topics in a metadata request with
    ``allow_auto_topic_creation``, so a missing one would be created with the broker's
    defaults (one partition, where the deployment needs its own count), and logged as an
    error at each refresh. With none left, or when the broker does not answer, the client stays
    as it was (this only saves work).
    """
    wanted = sorted(set(topics))
    try:
        kafkas = [kafka_client(client) for client in clients]
        # Which exist, asked without creating any.
        request = MetadataRequest(wanted, allow_auto_topic_creation=False)
        answer = await asyncio.wait_for(kafkas[0].send(kafkas[0].get_random_node(), request), TRACK_TIMEOUT_SECONDS)
        found = ClusterMetadata()
        found.update_metadata(answer)
        tracked = [t for t in wanted if t in found.topics()]
    except Exception as exc:
        log.warning("could not narrow a Kafka client's metadata refresh to its topics: %r", exc)
        return
    if tracked:
        for kafka in kafkas:
            kafka.set_topics(tracked)


def faust_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``faust.App`` for the brokers: URL, metadata refresh and credentials
    (TLS, SASL)."""
    options: dict[str, Any] = {"broker": f"kafka://{settings.kafka_bootstrap}"}
    if settings.metadata_max_age_seconds is not None:
        refresh = int(settings.metadata_max_age_seconds * 1000)
        options.update(consumer_metadata_max_age_ms=refresh, producer_metadata_max_age_ms=refresh)
    context = kafka_ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=None if password is None else password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def mongo_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``AsyncMongoClient``/``MongoClient`` for TLS (none when it is off;
    a ``tls=true`` in the URL still works)."""
    if not settings.mongo_tls:
        return {}
    options: dict[str, Any] = {"tls": True}
    if settings.mongo_tls_ca_file is not None:
        options["tlsCAFile"] = str(settings.mongo_tls_ca_file)
    if settings.mongo_tls_certificate_key_file is not None:
        options["tlsCertificateKeyFile"] = str(settings.mongo_tls_certificate_key_file)
    return options
