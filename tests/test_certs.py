"""The generated certificate: kept in the state directory, remade only when it must be,
ordinary-looking, and the trust rule that decides whether links pin it."""

from __future__ import annotations

import base64
import datetime
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from anytls.certs import (
    CERT_FILE,
    KEY_FILE,
    LIFETIME,
    make_self_signed,
    publicly_trusted,
    spki_sha256_base64,
    stored_certificate,
)
from anytls.errors import ConfigError
from tests.helpers.certs import make_ca_signed_cert


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_stored_once_then_kept(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "anytls"
    first = stored_certificate(directory, ["vpn.example.org", "192.0.2.7", "localhost"])
    assert first.made == "none was stored yet"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    assert first.cert_path == directory / CERT_FILE
    assert first.sha256 == _der_sha256(_load(first.cert_path))
    again = stored_certificate(directory, ["vpn.example.org", "localhost"])  # a subset
    assert (again.made, again.sha256) == ("", first.sha256)
    # A key file whose mode was loosened by hand is tightened again.
    (directory / KEY_FILE).chmod(0o644)
    stored_certificate(directory, ["localhost"])
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600


def test_new_name_makes_a_new_certificate_with_the_same_key(tmp_path: Path) -> None:
    first = stored_certificate(tmp_path, ["127.0.0.1", "localhost"])
    key_pem = (tmp_path / KEY_FILE).read_bytes()
    spki = spki_sha256_base64(_load(first.cert_path))
    second = stored_certificate(tmp_path, ["vpn.example.org", "127.0.0.1", "localhost"])
    assert second.made == "the stored certificate does not name vpn.example.org"
    assert second.sha256 != first.sha256
    # Same key: sing-box's public-key pin survives, the certificate pin does not.
    assert (tmp_path / KEY_FILE).read_bytes() == key_pem
    assert spki_sha256_base64(_load(second.cert_path)) == spki
    names = _load(second.cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(names.value.get_values_for_type(x509.DNSName)) == {"vpn.example.org", "localhost"}


def test_going_back_to_an_earlier_host_keeps_the_pin(tmp_path: Path) -> None:
    # e.g. "-l 0.0.0.0" (the machine's name) one day, "-l 127.0.0.1" the next, then back:
    # one new certificate, which names both, and then no more.
    first = stored_certificate(tmp_path, ["vm.example", "localhost"])
    second = stored_certificate(tmp_path, ["127.0.0.1", "localhost"])
    assert second.made == "the stored certificate does not name 127.0.0.1"
    third = stored_certificate(tmp_path, ["vm.example", "localhost"])
    fourth = stored_certificate(tmp_path, ["127.0.0.1", "localhost"])
    assert (third.made, fourth.made) == ("", "")
    assert third.sha256 == fourth.sha256 == second.sha256 != first.sha256
    cert = _load(second.cert_path)
    assert cert.subject.rfc4514_string() == "CN=127.0.0.1"  # the current first host
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"vm.example", "localhost"}
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_near_expiry_is_renewed(tmp_path: Path) -> None:
    stored_certificate(tmp_path, ["localhost"])
    key = serialization.load_pem_private_key((tmp_path / KEY_FILE).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    short = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=350))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / CERT_FILE).write_bytes(short.public_bytes(serialization.Encoding.PEM))
    renewed = stored_certificate(tmp_path, ["localhost"])
    assert renewed.made.startswith("the stored certificate expires on ")
    assert _load(renewed.cert_path).not_valid_after_utc > now + datetime.timedelta(days=300)


def test_damaged_or_unwritable_state_is_a_config_error(tmp_path: Path) -> None:
    stored_certificate(tmp_path, ["localhost"])
    (tmp_path / CERT_FILE).write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"damaged.*remove self-signed-cert\.pem"):
        stored_certificate(tmp_path, ["localhost"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cannot keep the generated certificate.*--state-dir"):
        stored_certificate(blocker / "sub", ["localhost"])


def test_generated_certificate_looks_ordinary() -> None:
    cert, key = make_self_signed(["vpn.example.org", "203.0.113.9", "localhost"])
    der = cert.public_bytes(serialization.Encoding.DER)
    assert b"anytls" not in der.lower()
    assert cert.subject.rfc4514_string() == "CN=vpn.example.org"
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == LIFETIME
    assert cert.serial_number.bit_length() > 100
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.9"]
    assert isinstance(key.curve, ec.SECP256R1)
    # sing-box's pin: base64 SHA-256 of the SubjectPublicKeyInfo DER.
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_sha256_base64(cert) == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    # An IP-only server: the IP is the subject.
    ip_only, _ = make_self_signed(["198.51.100.1"])
    assert ip_only.subject.rfc4514_string() == "CN=198.51.100.1"


def test_publicly_trusted_follows_the_system_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_ca_signed_cert(tmp_path, ["proxy.example.com"])
    assert not publicly_trusted(str(cert), str(key), "proxy.example.com")
    # The same chain once its CA is in the store clients use (OpenSSL reads SSL_CERT_FILE).
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert publicly_trusted(str(cert), str(key), "proxy.example.com")
    assert not publicly_trusted(str(cert), str(key), "other.example.com")
    assert not publicly_trusted(str(cert), str(key), None)
