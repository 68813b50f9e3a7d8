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
- rfc3987_syntax: on import it compiles its IRI grammar into Lark parsers, 1.3 s here, and
  jsonschema imports it for the `iri` formats, which no Jupyter schema uses; so every
  JupyterLab start (jupyter_events) and every `import nbformat` paid it
  (jupyter-server/jupyter_server#1559). Its functions are given first, and the grammar is
  compiled when one is first called.

AIFACTORY_LIBRARY_FIXES=off leaves the libraries as they come: to tell whether a fault is
theirs or ours, and for the stock baseline in benchmarks/spawn.py.
"""

import importlib
import importlib.machinery
import importlib.util
import os
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


def _iri_grammar_when_first_used(package) -> None:
    """Instead of the package's code: the same names, from the real module (its
    syntax_helpers, which compiles the grammar) once one of them is first used."""
    if importlib.util.find_spec("lark") is None:
        # Its own code then fails to import, as jsonschema expects (it checks no iri then).
        raise ImportError("rfc3987_syntax needs lark")

    def real():
        return importlib.import_module(package.__name__ + ".syntax_helpers")

    def public() -> list[str]:
        return [n for n in vars(real()) if not n.startswith("_")]

    def is_valid_syntax(term: str, value: str):
        return real().is_valid_syntax(term, value)

    def parse(term: str, value: str):
        return real().parse(term, value)

    def __getattr__(name: str):
        if name == "__all__":  # `import *` gives what the package's own code would give
            return public()
        if name.startswith("__"):  # the import system's questions: as of any package
            raise AttributeError(name)
        helpers = real()  # it may be the submodule asked for, now set on the package
        return vars(package)[name] if name in vars(package) else getattr(helpers, name)

    def __dir__():
        return sorted(set(vars(package)) | set(public()))

    for function in (is_valid_syntax, parse):  # found by pickle where the real ones are
        function.__module__, function.__qualname__ = package.__name__, function.__name__
        setattr(package, function.__name__, function)
    package.__getattr__, package.__dir__ = __getattr__, __dir__


FIXES = {"distributed.client": _close_dropped_clients_off_the_collector,
         "ssl": _clear_openssl_errors}
# Run instead of a module's own code (a package keeps its path, so its submodules import).
INSTEAD = {"rfc3987_syntax": _iri_grammar_when_first_used}
SOURCE_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)


class AfterImport:
    """A meta path finder that makes FIXES[name](module) right after `name` is first run,
    and runs INSTEAD[name](module) in place of the module's own code."""

    def __init__(self, fixes: dict, instead: dict | None = None):
        self.pending = dict(fixes)
        self.instead = dict(instead or {})

    def find_spec(self, name, path, target=None):
        if name not in self.pending and name not in self.instead:
            return None
        try:
            return self._fixing(name, path, target)
        except Exception:  # never an import that fails because of us: unfixed, as it was
            return None

    def _fixing(self, name, path, target):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        # A file's loader is made for this one spec, so wrapping its exec_module touches
        # nothing else (frozen and built-in modules have shared loaders: left alone). Each
        # is taken from its table when the module runs, not when a spec is only looked up.
        if isinstance(spec.loader, SOURCE_LOADERS):
            run = spec.loader.exec_module

            def exec_module(module):
                instead, after = self.instead.pop(name, None), self.pending.pop(name, None)
                if instead is not None:
                    try:
                        return instead(module)
                    except Exception:  # the module's own code, rather than none
                        pass
                run(module)
                if after is not None:
                    try:
                        after(module)
                    except Exception:  # the module as it comes, unfixed, rather than none
                        pass
            spec.loader.exec_module = exec_module
        return spec


def install(fixes: dict = FIXES, instead: dict = INSTEAD) -> None:
    finder = AfterImport({k: v for k, v in fixes.items() if k not in sys.modules},
                         {k: v for k, v in instead.items() if k not in sys.modules})
    for name, fix in fixes.items():
        if name in sys.modules:  # imported before us: fixed now
            fix(sys.modules[name])
    installed = next((f for f in sys.meta_path if isinstance(f, AfterImport)), None)
    if installed is None:
        sys.meta_path.insert(0, finder)
    else:  # one finder, whoever installs more
        installed.pending.update(finder.pending)
        installed.instead.update(finder.instead)


if os.environ.get("AIFACTORY_LIBRARY_FIXES") != "off":
    install()
