"""Certificate loading errors say what is wrong (issue 17 #5)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from anytls.aio.tls import server_context
from anytls.errors import ConfigError
from tests.cli._util import run_cli
from tests.helpers.net import make_self_signed_cert


def _rsa_cert(directory: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = directory / "rsa-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _error(cert: Path | str, key: Path | str | None) -> str:
    with pytest.raises(ConfigError) as info:
        server_context(str(cert), None if key is None else str(key))
    text = str(info.value)
    assert "PEM lib" not in text and "readable by this user" not in text
    return text


def test_each_certificate_problem_is_named(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path / "a")
    _, other_key = make_self_signed_cert(tmp_path / "b")
    server_context(str(cert), str(key))  # the pair itself loads
    assert "does not belong to the certificate" in _error(cert, other_key)
    assert "has an RSA key but" in _error(_rsa_cert(tmp_path), key)
    assert "an EC key: they are not a pair" in _error(_rsa_cert(tmp_path), key)
    assert "the two files are swapped" in _error(key, cert)
    assert "was given without --key" in _error(cert, None)
    missing = _error(cert, tmp_path / "nope.pem")
    assert "cannot read the key file" in missing and "No such file" in missing
    assert "cannot read the certificate file" in _error(tmp_path, key)  # a directory
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    assert "is not a PEM certificate" in _error(garbage, key)
    assert "is not a PEM private key" in _error(cert, garbage)


def test_cert_without_key_on_the_command_line(tmp_path: Path) -> None:
    cert, _ = make_self_signed_cert(tmp_path)
    result = run_cli("server", "-p", "a-long-password", "--cert", str(cert))
    assert result.returncode == 2
    assert "was given without --key" in result.stderr
    assert "key None" not in result.stderr and "PEM lib" not in result.stderr
