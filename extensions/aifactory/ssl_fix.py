"""Clear OpenSSL's per-thread error queue before each TLS read and write (imported, it acts).

CPython's ssl module does not (python/cpython#148594): an error one connection leaves on the
queue (a peer that closed: EPIPE) makes the next read or write of another, healthy connection
in the same thread fail with a spurious BrokenPipeError. With OpenSSL 3.5 (Debian 13's
Python 3.13) this closes a Dask scheduler's own connections once a Client is attached and
workers come and go; OpenSSL 3.0 (Debian 12) leaves no such entries. This does what CPython's
fix is to do, in front of the ssl module's read and write. A Dask preload (workers, nannies)
and `aifactory.dask` import it.
"""

import ctypes
import ctypes.util
import ssl


def _clear_error():
    # The libcrypto the ssl module uses: already loaded, so dlopen gives that same one.
    name = ("libcrypto.so.3" if ssl.OPENSSL_VERSION_INFO[0] == 3
            else ctypes.util.find_library("crypto"))
    try:
        return ctypes.CDLL(name).ERR_clear_error if name else None
    except (OSError, AttributeError):
        return None


def install() -> bool:
    """Wraps SSLSocket and SSLObject's read and write; False where libcrypto is not found."""
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

    for cls in (ssl.SSLSocket, ssl.SSLObject):
        for name in ("read", "write"):
            setattr(cls, name, clearing(getattr(cls, name)))
        cls._aifactory_clears_errors = True
    return True


INSTALLED = install()
