"""Pure parts of the session's protections: what the proxy forwards, the Dask identity."""

import os
import stat

import pytest

from aifactory import dask_tls
from aifactory.session import listener_uids, without_credentials


def test_the_proxy_keeps_an_apps_own_cookies_and_drops_the_hubs_and_jupyters():
    header = ("jupyterhub-user-alice=abc; _xsrf=2|x; jupyterhub-session-id=s; "
              "username-gpu01-8888=u; app_session=keep; theme=dark")
    assert without_credentials(header) == "app_session=keep; theme=dark"
    assert without_credentials("jupyterhub-user-alice=abc") == ""


def test_the_dask_identity_is_private_renewed_when_old_and_never_through_a_link(tmp_path):
    folder = str(tmp_path / "home" / ".aifactory" / "dask-tls")
    (tmp_path / "home").mkdir()
    cert, key = dask_tls.ensure(folder)
    for path, mode in ((cert.parent.parent, 0o700), (cert.parent, 0o700), (cert, 0o600),
                       (key, 0o600)):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
    assert "BEGIN CERTIFICATE" in cert.read_text() and "PRIVATE KEY" in key.read_text()
    first = cert.read_text()
    assert dask_tls.ensure(folder)[0].read_text() == first  # kept while young
    renewed = dask_tls.ensure(folder, now=cert.stat().st_mtime + dask_tls.RENEW_AFTER_S + 1)
    assert renewed[0].read_text() != first
    env = dask_tls.environment("/home/alice")
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == "/home/alice/.aifactory/dask-tls/key.pem"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "other").mkdir()
    os.symlink(elsewhere, tmp_path / "other" / ".aifactory")
    with pytest.raises(PermissionError, match="not a folder of this user's own"):
        dask_tls.ensure(str(tmp_path / "other" / ".aifactory" / "dask-tls"))


def test_several_cookie_lines_and_prefixed_names_are_stripped_too():
    assert without_credentials("theme=dark, jupyterhub-user-alice=abc; __Host-_xsrf=x") == "theme=dark"


def test_the_owner_of_a_listening_port_is_read_from_the_kernels_table(tmp_path):
    # /proc/net/tcp as Linux writes it: port 0x4A38 = 19000 listening (0A) by uid 1004,
    # and a connection (01) on it by uid 1001 that must not count.
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:4A38 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1004        0 4242 1\n"
        "   1: 0100007F:4A38 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1001        0 4243 1\n"
        "   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1\n")
    assert listener_uids(19000, (str(table),)) == {1004}
    assert listener_uids(22, (str(table),)) == {0}
    assert listener_uids(8888, (str(table), str(tmp_path / "missing"))) == set()


def test_a_stale_openssl_error_does_not_break_a_healthy_tls_connection(tmp_path):
    """python/cpython#148594: an error another connection left on OpenSSL's queue (here an
    EPIPE put there by hand) must not fail this connection's next read and write."""
    import ctypes
    import socket
    import ssl
    import threading

    from aifactory import ssl_fix

    assert ssl_fix.INSTALLED
    (tmp_path / "home").mkdir()
    cert, key = dask_tls.ensure(str(tmp_path / "home" / ".aifactory" / "dask-tls"))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    a, b = socket.socketpair()
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    client = client_ctx.wrap_socket(b)
    handshake.join()

    crypto = ctypes.CDLL("libcrypto.so.3")
    crypto.ERR_set_error.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    crypto.ERR_peek_error.restype = ctypes.c_ulong
    server.setblocking(False)
    for _ in range(2):
        crypto.ERR_new()  # a stale EPIPE (ERR_LIB_SYS), as a peer that went away leaves it
        crypto.ERR_set_error(2, 32, None)
        # Nothing to read yet: "try again" (without the fix: BrokenPipeError on Python 3.13
        # with OpenSSL 3.5, SSLError "[SYS] unknown error" on 3.11 with OpenSSL 3.0).
        with pytest.raises(ssl.SSLWantReadError):
            server.recv(4)
        for send in (client.send, client.sendall):  # what tornado and Dask write with
            crypto.ERR_new()
            crypto.ERR_set_error(2, 32, None)
            send(b"ping")
            assert crypto.ERR_peek_error() == 0  # cleared before the write, none left after
            assert wait_for_bytes(server, 4) == b"ping"
    client.close()
    server.close()


def wait_for_bytes(sock, n: int) -> bytes:
    import select
    import ssl
    while True:
        select.select([sock], [], [], 5)
        try:
            return sock.recv(n)
        except ssl.SSLWantReadError:
            continue


def test_a_login_counts_only_from_the_hubs_own_page_on_its_own_host():
    from aifactory.login import foreign_login
    hub = "http://hub.localhost:8000"
    assert not foreign_login(hub, "hub.localhost:8000", hub, "same-origin")
    assert not foreign_login(hub, "HUB.localhost:8000", None, None)  # a client without Origin
    assert foreign_login(hub, "dave.hub.localhost:8000", None, None)  # on dave's origin
    # dave's page posting his own name and password to the hub (login forgery)
    assert foreign_login(hub, "hub.localhost:8000", "http://dave.hub.localhost:8000", None)
    assert foreign_login(hub, "hub.localhost:8000", None, "same-site")
    assert foreign_login(hub, "hub.localhost:8000", "null", None)
    # a site's public address with its default port written out, or left out
    assert not foreign_login("https://hub.example.org:443", "hub.example.org", None, None)
    assert not foreign_login("https://hub.example.org", "hub.example.org:443",
                             "https://hub.example.org", "same-origin")
    assert not foreign_login("", "anything", "http://elsewhere", "cross-site")  # no subdomains


def test_a_module_name_from_a_url_never_runs_as_a_shell_command(tmp_path, monkeypatch):
    """jupyterlmod's GET /module/modules/NAME puts NAME in a shell line; a link the user opens
    must not run what it carries (aifactory.session quotes each argument)."""
    import asyncio

    import module as lmod_api

    from aifactory.session import _guard_lmod
    marker = tmp_path / "ran"
    # A stand-in for Lmod's command that prints its arguments, one per line.
    monkeypatch.setattr(lmod_api, "MODULE_CMD", "printf '%s\\n'")
    monkeypatch.setattr(lmod_api, "module", lmod_api.module)  # undone after the test
    attack = f"x;touch {marker};echo"
    asyncio.run(lmod_api.module("show", attack))
    assert marker.exists(), "the stand-in does not show the hole it is meant to show"
    marker.unlink()
    _guard_lmod()
    _guard_lmod()  # the server may load the extension twice: quoted once
    asyncio.run(lmod_api.ModuleAPI().show(attack))
    assert not marker.exists()
