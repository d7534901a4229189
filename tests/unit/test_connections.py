"""The Kafka and MongoDB connection options built from the settings (TLS, SASL).

No TLS Kafka broker or MongoDB runs in the tests: these check the options every client is
created with (``streams.connections``), and that each process uses the helper.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import ValidationError

from streams.connections import faust_options, kafka_options, mongo_options, track_topics
from streams.settings import Settings
from tests.api.test_tls import self_signed

REPO = Path(__file__).resolve().parents[2]


def test_plaintext_by_default() -> None:
    settings = Settings(kafka_bootstrap="k1:9092,k2:9092")
    assert kafka_options(settings) == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    assert faust_options(settings) == {"broker": "kafka://k1:9092,k2:9092"}
    assert mongo_options(settings) == {}


def test_a_metadata_refresh_reaches_every_client() -> None:
    settings = Settings(metadata_max_age_seconds=30)
    assert kafka_options(settings)["metadata_max_age_ms"] == 30_000
    options = faust_options(settings)
    assert options["consumer_metadata_max_age_ms"] == options["producer_metadata_max_age_ms"] == 30_000


def test_kafka_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(
        kafka_security_protocol="SSL", kafka_ssl_cafile=cert, kafka_ssl_certfile=cert, kafka_ssl_keyfile=key
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The private CA is the one trusted.
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "scheduler-api-test"),),)]
    assert "sasl_mechanism" not in options
    credentials = faust_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context is context or isinstance(credentials.context, ssl.SSLContext)


def test_kafka_sasl_over_tls() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="scheduler",
        kafka_sasl_password="s3cret",  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "scheduler", "s3cret",
    )  # fmt: skip
    credentials = faust_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "scheduler", "s3cret", "SCRAM-SHA-512",
    )  # fmt: skip
    assert credentials.ssl_context is not None
    # The password never shows in the settings' repr (logs, errors).
    assert "s3cret" not in repr(settings)


def test_sasl_without_tls_has_no_ssl_context() -> None:
    options = kafka_options(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u"))
    assert "ssl_context" not in options
    assert options["sasl_mechanism"] == "PLAIN"


def test_mongo_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(mongo_tls=True, mongo_tls_ca_file=cert, mongo_tls_certificate_key_file=key)
    assert mongo_options(settings) == {"tls": True, "tlsCAFile": str(cert), "tlsCertificateKeyFile": str(key)}


def test_unknown_protocol_is_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        Settings(kafka_security_protocol="TLS")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path",
    [
        "streams/executor.py", "streams/admin.py", "streams/app.py", "streams/metrics.py", "api/bus.py",
        "api/routes/events.py", "api/app.py", "projections/run.py",
    ],
)  # fmt: skip
def test_processes_create_their_clients_with_the_helper(path: str) -> None:
    """A client created with only ``bootstrap_servers=settings.kafka_bootstrap`` would ignore TLS."""
    text = (REPO / path).read_text()
    assert "bootstrap_servers=self.settings.kafka_bootstrap" not in text
    assert "bootstrap_servers=settings.kafka_bootstrap" not in text
    assert 'broker=f"kafka://' not in text
    assert any(helper in text for helper in ("kafka_options(", "faust_options(", "mongo_options("))


async def test_narrowing_a_clients_metadata_never_fails_its_start() -> None:
    """track_topics only saves work: a broker that does not answer leaves the client as it was."""

    class _Kafka:
        topics_set: list[str] | None = None

        def get_random_node(self) -> int:
            return 1

        async def send(self, node: int, request: object) -> object:
            raise ConnectionError("broker away")

        def set_topics(self, topics: list[str]) -> None:
            self.topics_set = topics

    class _Producer:
        client = _Kafka()

    producer = _Producer()
    await track_topics(["t.commands"], producer)
    assert producer.client.topics_set is None
