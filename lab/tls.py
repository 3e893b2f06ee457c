"""The lab's certificate authority: one CA under ``.lab/ca`` that signs every lab peer's
TLS certificate (Samba's LDAPS, the Exchange endpoint, the vault). The service trusts it
through ``CA_BUNDLE``, as it would trust an organisation's internal CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .core import Lab

_KEY_PEM = serialization.PrivateFormat.TraditionalOpenSSL
# Through the relay the service names Exchange as an on-premises client would, by a host name
# that resolves nowhere here; its certificate must carry that name (the DC's carries its own).
EXCHANGE_HOSTNAME = "exchange.o365lab.example"
CONNECT_HOSTNAME = "connect.o365lab.example"
DC_HOSTNAME = "dc1.o365lab.example"
HOST_NAMES = {"exchange": (EXCHANGE_HOSTNAME,), "connect": (CONNECT_HOSTNAME,)}


def _names(cert_path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate is issued for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(san.get_values_for_type(x509.DNSName)) | ips


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, _KEY_PEM, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def ca(lab: Lab) -> tuple[Path, Path]:
    """The lab CA's certificate and key paths, created once and kept."""
    cert_path, key_path = lab.path("ca", "ca.pem"), lab.path("ca", "ca.key")
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "O365 Provisioning Lab CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue(lab: Lab, name: str, hosts: list[str]) -> tuple[Path, Path]:
    """A server certificate for ``hosts`` (DNS names or IP addresses, plus the names in
    ``HOST_NAMES``) signed by the lab CA; kept while it still covers them."""
    hosts = [*hosts, *(h for h in HOST_NAMES.get(name, ()) if h not in hosts)]
    cert_path, key_path = lab.path("ca", f"{name}.pem"), lab.path("ca", f"{name}.key")
    if cert_path.exists() and key_path.exists() and set(hosts) <= _names(cert_path):
        return cert_path, key_path
    ca_cert_path, ca_key_path = ca(lab)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def start(lab: Lab) -> None:
    """Not a process: makes sure the CA exists and publishes it as the service's CA bundle."""
    cert_path, _ = ca(lab)
    lab.settings["CA_BUNDLE"] = str(cert_path)
    lab.settings["LAB_CA_CERT"] = str(cert_path)
