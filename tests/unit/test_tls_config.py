"""
TLS settings: the production rule, pairs of files, and the certificate files that
the gRPC server reads again when they change.
"""

from __future__ import annotations

import os

import grpc
import pytest
import trustme
from structlog.testing import capture_logs

from lake.config import load_settings
from lake.errors import ConfigError
from lake.tls import (
    CertificateFiles,
    ClientTLS,
    ServerTLS,
    channel_credentials,
    server_credentials,
)
from tests.certs import issue, write_ca


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("LAKE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def production(monkeypatch):
    """Everything production needs except a decision about TLS."""
    monkeypatch.setenv("LAKE_POSTGRES__DSN", "postgresql://lake@db:5432/lake")
    monkeypatch.setenv("LAKE_REDIS__URL", "redis://cache:6379/0")
    monkeypatch.setenv("LAKE_AUTH__TOKENS", '{ "' + "ab" * 32 + '" = "acme" }')


def test_production_refuses_a_plaintext_grpc_port(production):
    """Production without TLS files: one line naming the key and the way out."""
    with pytest.raises(ConfigError) as info:
        load_settings("production")
    message = str(info.value)
    assert "\n" not in message
    assert "grpc.tls.cert_file" in message
    assert "'production'" in message
    assert "LAKE_GRPC__TLS__BEHIND_PROXY" in message


def test_production_accepts_tls_files_or_a_declared_proxy(production, monkeypatch):
    """TLS files, or behind_proxy = true, satisfy production."""
    monkeypatch.setenv("LAKE_GRPC__TLS__BEHIND_PROXY", "true")
    assert load_settings("production")["grpc"]["tls"]["behind_proxy"] is True
    monkeypatch.delenv("LAKE_GRPC__TLS__BEHIND_PROXY")
    monkeypatch.setenv("LAKE_GRPC__TLS__CERT_FILE", "/certs/lake.pem")
    monkeypatch.setenv("LAKE_GRPC__TLS__KEY_FILE", "/certs/lake.key")
    assert load_settings("production")["grpc"]["tls"]["cert_file"] == "/certs/lake.pem"


def test_development_and_testing_stay_plaintext_by_default():
    """The quickstart profiles need no certificate."""
    for profile in ("development", "testing"):
        assert load_settings(profile)["grpc"]["tls"]["cert_file"] == ""


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LAKE_GRPC__TLS__CERT_FILE": "c.pem"}, "grpc.tls.cert_file"),
        ({"LAKE_MESH__TLS__KEY_FILE": "k.pem"}, "mesh.tls.key_file"),
        ({"LAKE_GRPC__TLS__CLIENT_CA_FILE": "ca.pem"}, "grpc.tls.client_ca_file"),
        (
            {"LAKE_CLIENT__TLS__CERT_FILE": "c.pem", "LAKE_CLIENT__TLS__KEY_FILE": "k"},
            "client.tls.cert_file",
        ),
        (
            {"LAKE_REDIS__URL": "redis://c:6379/0", "LAKE_REDIS__SSL_CA_FILE": "ca"},
            "redis.url",
        ),
    ],
)
def test_incomplete_tls_settings_are_refused(monkeypatch, variables, named):
    """A certificate without its key, mTLS without a certificate, a client
    certificate without a CA, or Redis TLS files on redis:// are config errors."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings("testing")


@pytest.fixture
def pair(tmp_path):
    """Two certificates for 127.0.0.1 from different CAs, and their CA files."""
    one, two = trustme.CA(), trustme.CA()
    return (
        issue(one, tmp_path, "one"),
        issue(two, tmp_path, "two"),
        write_ca(one, tmp_path / "ca-one.pem"),
    )


def test_unchanged_files_are_not_read_again(pair):
    """Before each handshake grpcio asks; unchanged files answer None."""
    one, _, _ = pair
    files = CertificateFiles(ServerTLS(str(one.cert), str(one.key)))
    assert isinstance(files.initial, grpc.ServerCertificateConfiguration)
    assert files() is None
    assert files() is None


def test_changed_files_give_a_new_configuration_once(pair):
    """A replaced certificate and key are loaded once, then unchanged again."""
    one, two, _ = pair
    files = CertificateFiles(ServerTLS(str(one.cert), str(one.key)))
    os.replace(two.cert, one.cert)
    os.replace(two.key, one.key)
    assert isinstance(files(), grpc.ServerCertificateConfiguration)
    assert files() is None


def test_a_half_replaced_pair_keeps_the_old_one_until_the_key_follows(pair):
    """A new certificate beside the old key is not taken (logged once); the key
    arriving is."""
    one, two, _ = pair
    files = CertificateFiles(ServerTLS(str(one.cert), str(one.key)))
    os.replace(two.cert, one.cert)
    with capture_logs() as logs:
        assert files() is None
        assert files() is None
    assert [e["event"] for e in logs] == ["tls_reload_failed"]  # once, not per call
    os.replace(two.key, one.key)
    assert isinstance(files(), grpc.ServerCertificateConfiguration)


def test_missing_or_mismatched_files_fail_at_start(pair, tmp_path):
    """Server and client credentials name the file they cannot use."""
    one, two, ca = pair
    with pytest.raises(ConfigError, match="are no PEM pair"):
        server_credentials(ServerTLS(str(one.cert), str(two.key)))
    with pytest.raises(ConfigError, match=r"cannot read the TLS file .*none\.pem"):
        server_credentials(ServerTLS(str(tmp_path / "none.pem"), str(one.key)))
    with pytest.raises(ConfigError, match=r"none\.pem"):
        channel_credentials(ClientTLS(str(tmp_path / "none.pem")))
    with pytest.raises(ConfigError, match="both"):
        channel_credentials(ClientTLS(str(ca), cert_file=str(one.cert)))
