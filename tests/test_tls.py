"""The demo's CA and certificates: a strict TLS client (Python 3.13's default) accepts them."""

import socket
import ssl
import threading

from aifactory.cluster import tls


def test_a_certificate_of_the_demo_ca_passes_a_strict_check_for_each_name(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(tls, "CA_DIR", tmp_path / "ca")
    monkeypatch.setattr(tls, "TLS_DIR", tmp_path / "tls")
    monkeypatch.setattr(tls, "CA_CERT", tmp_path / "tls" / "ca.crt")
    monkeypatch.setattr(tls, "SYSTEM_TRUST", tmp_path / "trust.crt")
    monkeypatch.setattr(tls, "sh", lambda *argv, **kw: None)  # no update-ca-certificates
    assert tls.ensure_ca()
    names = tls.hub_names("hub.localhost", ["alice"])
    pair = tls.ensure_cert("hub", names)
    assert (pair.key.stat().st_mode & 0o777) == 0o600
    # Made again only when something changed: the same names give the same certificate.
    first = pair.cert.read_bytes()
    assert tls.ensure_cert("hub", names).cert.read_bytes() == first
    assert not tls.ensure_cert("hub", names).made
    assert tls.ensure_cert("hub", names + ["bob.hub.localhost"]).made
    assert not tls.ensure_cert("hub", names + ["bob.hub.localhost"]).made
    # A CA made again (same name, new key): every certificate of the old one is made again.
    (tmp_path / "ca" / "ca.key").unlink()
    assert tls.ensure_ca()
    assert tls.ensure_cert("hub", names + ["bob.hub.localhost"]).made

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert, pair.key)
    client = ssl.create_default_context(cafile=str(tls.CA_CERT))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    for host in ("hub.localhost", "alice.hub.localhost", "allocations--service.hub.localhost",
                 "someone-new.hub.localhost"):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            try:
                server.wrap_socket(conn, server_side=True).recv(1)
            except (ssl.SSLError, OSError):
                pass
        threading.Thread(target=serve, daemon=True).start()
        with client.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                server_hostname=host) as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
        listener.close()
