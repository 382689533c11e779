"""Certificates of a Lifeboat fleet: a private CA and the certificates it signs.

Every certificate serves both ends of a connection (EKU serverAuth and clientAuth):
a daemon presents its own server certificate when it calls other daemons.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lifeboat.config import TlsFiles

# Room for clocks that are a little behind the one that issued the certificate.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Pem:
    cert: bytes  # PEM certificate
    key: bytes  # PEM private key (PKCS8, unencrypted)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _pem(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(
        cert=certificate.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def new_ca(common_name: str = "lifeboat-ca", days: int = 3650) -> Pem:
    """A self-signed CA that signs certificates only, no intermediate CAs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        _builder(common_name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(certificate, key)


def _alternative_names(
    common_name: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for dns in dict.fromkeys([common_name, *dns_names]):
        names.append(x509.DNSName(dns))
    for ip in dict.fromkeys(ipaddress.ip_address(text) for text in ip_addresses):
        names.append(x509.IPAddress(ip))
    return names


def issue(
    ca: Pem,
    common_name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 825,
) -> Pem:
    """A certificate for both ends of a connection, named `common_name`, signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key made by new_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    names = _alternative_names(common_name, dns_names, ip_addresses)
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        _builder(common_name, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(certificate, key)


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a new 0600 file renamed into place, never readable by
    others, never half-written."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write(pem: Pem, directory: Path, stem: str) -> TlsFiles:
    """Write `directory/stem.pem` and `directory/stem.key` (0600; a new directory is 0700)."""
    directory = directory.absolute()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = TlsFiles(directory / f"{stem}.pem", directory / f"{stem}.key")
    _write_private(files.key, pem.key)
    _write_private(files.cert, pem.cert)
    return files
