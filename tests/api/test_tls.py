"""HTTPS: ``python -m api`` with a certificate and key serves TLS, and only TLS, on its port."""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from api.settings import ApiSettings
from tests.api.conftest import AUDIENCE, ISSUER, SECRET, auth, free_port, new_tenant
from tests.conftest import Infra
from tests.integration.harness import REPO, stop_group


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and ``localhost``, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scheduler-api-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "api.crt", directory / "api.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def https_api(infra: Infra, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A ``python -m api`` process serving HTTPS with a fresh self-signed certificate."""
    cert_file, key_file = self_signed(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_KAFKA_BOOTSTRAP=infra.bootstrap,
        SCHED_MONGO_URL=infra.mongo_url,
        SCHED_MONGO_DATABASE=f"tls{os.getpid()}",
        SCHED_TOPIC_PREFIX=f"tls{port}.",
        SCHED_JWT_HS256_SECRET=SECRET,
        SCHED_JWT_AUDIENCE=AUDIENCE,
        SCHED_JWT_ISSUER=ISSUER,
        SCHED_API_PORT=str(port),
        SCHED_API_TLS_CERT_FILE=str(cert_file),
        SCHED_API_TLS_KEY_FILE=str(key_file),
        SCHED_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        trust = ssl.create_default_context(cafile=str(cert_file))
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    if httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the API did not start: " + log_path.read_text()[-3000:])
                time.sleep(0.1)
            yield port, cert_file
        finally:
            stop_group(proc, 10)


def test_api_serves_https_with_the_configured_certificate(https_api: tuple[int, Path]) -> None:
    port, cert_file = https_api
    trust = ssl.create_default_context(cafile=str(cert_file))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=10) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        # An authenticated read goes through the same TLS listener (an empty page: new tenant).
        listed = client.get("/v1/tasks", headers=auth(new_tenant(), ["viewer"]))
        assert listed.status_code in (200, 503), listed.text
        served = client.get("/healthz").extensions["network_stream"].get_extra_info("ssl_object")
        assert served is not None
        assert served.getpeercert()["subject"] == ((("commonName", "scheduler-api-test"),),)


def test_plain_http_and_untrusted_clients_are_refused(https_api: tuple[int, Path]) -> None:
    port, _ = https_api
    # Plain HTTP to the TLS port gets no HTTP answer at all.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    # A client that does not trust the self-signed certificate refuses the server.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=5)


def test_tls_settings_need_both_files_and_existing_ones(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    base = {"jwt_hs256_secret": SECRET}
    with pytest.raises(ValidationError, match="must be set together"):
        ApiSettings(**base, api_tls_cert_file=cert_file)
    with pytest.raises(ValidationError, match="does not exist"):
        ApiSettings(**base, api_tls_cert_file=cert_file, api_tls_key_file=tmp_path / "missing.key")
    settings = ApiSettings(**base, api_tls_cert_file=cert_file, api_tls_key_file=key_file)
    assert settings.api_tls_key_file == key_file
