"""The demo's own certificate authority and its certificates (bring-up, root).

`up` makes a CA once (its key stays root-only under /var/lib/aifactory/ca), adds it to the
machine's trust store (curl, Python, the hub's calls to the IdP), and from it a certificate for
each name a browser reaches: the hub's host, every user's subdomain and the service's, and the
IdP. A site uses its own certificates instead (AIFACTORY_TLS_CERT / _KEY) and skips all this.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path

from .system import ETC_DIR, STATE_DIR, sh, write_if_changed

CA_DIR = STATE_DIR / "ca"
TLS_DIR = ETC_DIR / "tls"
CA_CERT = TLS_DIR / "aifactory-demo-ca.crt"
SYSTEM_TRUST = Path("/usr/local/share/ca-certificates/aifactory-demo-ca.crt")
RENEW_DAYS = 30  # a certificate this close to its end is made again


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path
    made: bool = False  # made by this call: what serves it must be restarted


def _crypto():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    return x509, hashes, serialization, ec


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ensure_ca() -> bool:
    """The CA (10 years), trusted by this machine; True when it was made now."""
    x509, hashes, serialization, ec = _crypto()
    key_file, made = CA_DIR / "ca.key", False
    if not key_file.exists() or not _has_key_ids(CA_CERT, ca=True):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME,
                                             "aifactory demo CA (this machine only)")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        CA_DIR.mkdir(parents=True, exist_ok=True)
        CA_DIR.chmod(0o700)
        write_if_changed(key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode(), 0o600)
        write_if_changed(CA_CERT, cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
        made = True
    if write_if_changed(SYSTEM_TRUST, CA_CERT.read_text(), 0o644) or made:
        sh("update-ca-certificates", "--fresh")
    return made


def _has_key_ids(cert_file: Path, ca: bool) -> bool:
    """Whether the certificate names its keys, as strict verifiers require (Python 3.13's
    default, VERIFY_X509_STRICT: a CA's subject key id, a server's authority key id)."""
    x509, *_ = _crypto()
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier if ca else x509.AuthorityKeyIdentifier)
        return True
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False


def _needs_new(cert_file: Path, names: list[str], ca_pem: bytes) -> bool:
    """Whether the certificate must be made again: other names, another CA (one of the same
    name made again counts: the issuer's key id differs), no key ids, or its end near."""
    x509, *_ = _crypto()
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return True
    try:
        issuer_key = cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier
        ca_key = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return True
    return (sorted(sans.get_values_for_type(x509.DNSName)) != sorted(names)
            or cert.issuer != ca.subject or issuer_key != ca_key
            or cert.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS))


def ensure_cert(name: str, dns_names: list[str], owner: str = "root") -> Pair:
    """A certificate of the demo CA for `dns_names` (and 127.0.0.1), key readable by `owner`
    only; made again when its names change or its end is near."""
    x509, hashes, serialization, ec = _crypto()
    pair = Pair(TLS_DIR / f"{name}.crt", TLS_DIR / f"{name}.key")
    ca_pem = CA_CERT.read_bytes()
    if _needs_new(pair.cert, dns_names, ca_pem) or not pair.key.exists():
        pair = Pair(pair.cert, pair.key, made=True)
        ca_key = serialization.load_pem_private_key((CA_DIR / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate(ca_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(n) for n in dns_names] + [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME,
                                                            dns_names[0])]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=397))  # browsers' longest
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write_if_changed(pair.key, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode(), 0o600, owner)
        write_if_changed(pair.cert, cert.public_bytes(serialization.Encoding.PEM).decode(),
                         0o644)
    shutil.chown(pair.key, owner, owner)
    return pair


def hub_names(host: str, users: list[str]) -> list[str]:
    """The hub's host, the service's subdomain and each user's (their server's origin), and
    a wildcard for people added after the certificate was made."""
    return [host, f"*.{host}", f"allocations--service.{host}", *(f"{u}.{host}" for u in users)]


def client_context():
    """An ssl context that trusts the demo CA (whatever the environment's trust says)."""
    import ssl
    return ssl.create_default_context(cafile=str(CA_CERT)) if CA_CERT.exists() else None


def answers(url: str) -> bool:
    """Whether `url` answers 200 over https checked against the demo CA (within 3 s)."""
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=3, context=client_context()) as r:
            return r.status == 200
    except OSError:
        return False
