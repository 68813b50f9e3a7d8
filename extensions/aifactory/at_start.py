"""Fixes for faults of libraries, loaded at the start of every Python of a session, so that
people's own code has them without importing aifactory: a plain `Client("tls://...")` in a
kernel, the code the Dask sidebar inserts, a script in a terminal.

Loaded by `aifactory-start.pth` in the site-packages of the shared venv (`aif`) and of the
site environments (aifactory.cluster.modules), and by aifactory.kernel_launcher in the
kernels of people's own environments and of loaded modules. Each fix is made when its
library is first imported, so a Python that never uses it pays nothing (importing
distributed takes half a second).

- distributed.utils: LoopRunner starts and stops every event loop under one class-wide,
  non-reentrant lock. A Client whose start failed (TLS asked for without TLS settings, a
  refused handshake) stays in a reference cycle; when the garbage collector finalizes it
  while another Client is starting, inside that lock, its close() waits for the same lock in
  the same thread, and the new Client hangs for ever, whatever its timeout. The lock becomes
  reentrant.
- ssl: aifactory.ssl_fix (OpenSSL's per-thread error queue, python/cpython#148594).
"""

import importlib.machinery
import sys


def _reentrant_loop_lock(utils) -> None:
    import threading  # here, not at start: distributed imports it anyway

    utils.LoopRunner._lock = threading.RLock()


def _clear_openssl_errors(ssl) -> None:
    from . import ssl_fix  # noqa: F401  (it acts on import)


FIXES = {"distributed.utils": _reentrant_loop_lock, "ssl": _clear_openssl_errors}
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
