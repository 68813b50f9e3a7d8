"""Fixes for faults of libraries, loaded at the start of every Python of a session, so that
people's own code has them without importing aifactory: a plain `Client("tls://...")` in a
kernel, the code the Dask sidebar inserts, a script in a terminal.

Loaded by `aifactory-start.pth` in the site-packages of the shared venv (`aif`) and of the
site environments (aifactory.cluster.modules), and by aifactory.kernel_launcher in the
kernels of people's own environments and of loaded modules. Each fix is made when its
library is first imported, so a Python that never uses it pays nothing (importing
distributed takes half a second).

- distributed.client: LoopRunner starts and stops every event loop under one class-wide,
  non-reentrant lock, and `Client.__del__` closes the client, so takes that lock, wherever
  the garbage collector happens to run it. A Client whose start failed (TLS asked for
  without TLS settings, a refused handshake) stays in a reference cycle until a collection
  finds it. When that collection runs while the next Client is starting, inside the lock,
  in the same thread the new Client hangs for ever; in the new Client's loop thread it
  waits out LoopRunner's 10 s and fails with a bare AssertionError (`assert loop is not
  None`). Here `__del__` hands the client to a thread of its own that closes it, so the
  collector never waits for the lock.
- ssl: aifactory.ssl_fix (OpenSSL's per-thread error queue, python/cpython#148594).
"""

import importlib.machinery
import sys


def _close_dropped_clients_off_the_collector(client_module) -> None:
    import queue  # here, not at start: distributed imports them anyway
    import threading

    dropped = queue.SimpleQueue()  # its put() is safe in __del__ (reentrant, takes no lock)

    def close_dropped():
        while True:
            client = dropped.get()
            try:
                client.close()
            except Exception:  # as a finalizer's errors: nobody to tell
                pass
            del client

    threading.Thread(target=close_dropped, daemon=True,
                     name="aifactory: close dropped Clients").start()
    finalize = client_module.Client.__del__

    def __del__(self):
        if sys.is_finalizing():  # no thread runs any more: as distributed does
            return finalize(self)
        if getattr(self, "_Client__loop", None) is not None:  # what distributed's __del__ checks
            dropped.put(self)  # kept alive until closed; __del__ is not called twice

    client_module.Client.__del__ = __del__


def _clear_openssl_errors(ssl) -> None:
    from . import ssl_fix  # noqa: F401  (it acts on import)


FIXES = {"distributed.client": _close_dropped_clients_off_the_collector,
         "ssl": _clear_openssl_errors}
SOURCE_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)


class AfterImport:
    """A meta path finder that makes FIXES[name](module) right after `name` is first run."""

    def __init__(self, fixes: dict):
        self.pending = dict(fixes)

    def find_spec(self, name, path, target=None):
        fix = self.pending.get(name)
        if fix is None:
            return None
        try:
            return self._fixing(name, path, target, fix)
        except Exception:  # never an import that fails because of us: unfixed, as it was
            return None

    def _fixing(self, name, path, target, fix):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        # A file's loader is made for this one spec, so wrapping its exec_module touches
        # nothing else (frozen and built-in modules have shared loaders: left alone).
        if isinstance(spec.loader, SOURCE_LOADERS):
            self.pending.pop(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                try:
                    fix(module)
                except Exception:  # the module as it comes, unfixed, rather than none
                    pass
            spec.loader.exec_module = exec_module
        return spec


def install(fixes: dict = FIXES) -> None:
    finder = AfterImport({k: v for k, v in fixes.items() if k not in sys.modules})
    for name, fix in fixes.items():
        if name in sys.modules:  # imported before us: fixed now
            fix(sys.modules[name])
    if not any(isinstance(f, AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, finder)


install()
