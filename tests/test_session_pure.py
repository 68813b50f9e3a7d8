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
