"""Clear OpenSSL's per-thread error queue before each TLS read and write (imported, it acts).

CPython's ssl module does not (python/cpython#148594): an error one connection leaves on the
queue (a peer that closed: EPIPE) makes the next read or write of another, healthy connection
in the same thread fail with a spurious BrokenPipeError. With OpenSSL 3.5 (Debian 13's
Python 3.13) this closes a Dask scheduler's own connections once a Client is attached and
workers come and go; OpenSSL 3.0 (Debian 12) leaves no such entries. This does what CPython's
fix is to do, in front of the ssl module's read and write. A Dask preload (workers, nannies)
and `aifactory.dask` import it.
"""

import _ssl
import ctypes
import ssl

# Every call of CPython's that reads or writes a TLS record (SSLSocket.send and recv_into use
# the C object directly or through read; sendall goes through send).
METHODS = {ssl.SSLSocket: ("read", "write", "send", "do_handshake", "unwrap"),
           ssl.SSLObject: ("read", "write", "do_handshake", "unwrap")}


def _clear_error():
    """OpenSSL's ERR_clear_error from the very libcrypto the ssl module is linked with (looked
    up through _ssl itself), or None when that cannot be made sure of."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            return None
        return lib.ERR_clear_error
    except (OSError, AttributeError):
        return None


def install() -> bool:
    """Wraps METHODS; False where the ssl module's libcrypto cannot be reached."""
    if getattr(ssl.SSLSocket, "_aifactory_clears_errors", False):
        return True
    clear = _clear_error()
    if clear is None:
        return False

    def clearing(method):
        def call(self, *args, **kwargs):
            clear()
            return method(self, *args, **kwargs)
        return call

    for cls, names in METHODS.items():
        for name in names:
            setattr(cls, name, clearing(getattr(cls, name)))
        cls._aifactory_clears_errors = True
    return True


INSTALLED = install()
