"""aifactory.at_start: fixes of library faults that every Python of a session has from its
start, without the person importing aifactory. Each case runs in a Python of its own (the
shared venv's, with its aifactory-start.pth, or one started without it)."""

import json
import subprocess
import sys
import sysconfig

import pytest

# A Client whose start failed (TLS without TLS settings) stays in a reference cycle; the
# garbage collector then finalizes it while another Client holds LoopRunner's lock to start,
# as it happens by chance in a notebook's second or third Client. Done here on purpose: the
# collection in the thread that holds the lock, or in another thread (the new Client's loop
# thread) while the holder waits for it, as LoopRunner.start waits 10 s for its loop.
FAILED_CLIENT_COLLECTED_IN_THE_LOCK = """
import gc, sys, threading
gc.disable()
from distributed import Client
from distributed.utils import LoopRunner
try:
    Client("tls://127.0.0.1:1", timeout=2)
except TypeError:
    pass
assert any(isinstance(o, Client) for o in gc.get_objects()), "no failed Client left over"
with LoopRunner._lock:
    if sys.argv[1] == "same thread":
        gc.collect()
        print("collected")
    else:
        collected = threading.Event()
        threading.Thread(target=lambda: (gc.collect(), collected.set()), daemon=True).start()
        print("collected" if collected.wait(5) else "the collection waits for the lock")
"""
WHERE = ["same thread", "other thread"]


def python(code: str, timeout: float, *args: str, start_hook: bool = True
           ) -> subprocess.CompletedProcess:
    if start_hook:  # the shared venv's Python as every session process starts it
        argv = [sys.executable, "-P", "-c", code, *args]
    else:  # the same packages, but no .pth file is read (so no aifactory.at_start)
        purelib = sysconfig.get_paths()["purelib"]
        argv = [sys.executable, "-S", "-P", "-c",
                f"import sys; sys.path.append({purelib!r})\n" + code, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")


def test_the_venv_loads_the_fixes_at_start_and_imports_no_library_for_them():
    out = python("import sys; print(sorted(m for m in ('aifactory.at_start', 'ssl', "
                 "'distributed', 'ctypes') if m in sys.modules))", 30)
    assert out.stdout.split() == ["['aifactory.at_start']"], out.stderr


def test_each_fix_is_made_when_its_library_is_imported():
    out = python("import ssl, sys, distributed\n"
                 "print(sys.modules['aifactory.ssl_fix'].INSTALLED, "
                 "ssl.SSLSocket._aifactory_clears_errors, "
                 "distributed.Client.__del__.__module__)", 60)
    assert out.stdout.split() == ["True", "True", "aifactory.at_start"], out.stderr


def test_without_the_fix_a_failed_client_collected_in_the_loop_lock_hangs_or_stalls():
    """The fault itself, in distributed as released: in the same thread the collection
    waits for ever for its own lock; in another it waits as long as the lock is held."""
    with pytest.raises(subprocess.TimeoutExpired):
        python(FAILED_CLIENT_COLLECTED_IN_THE_LOCK, 10, "same thread", start_hook=False)
    out = python(FAILED_CLIENT_COLLECTED_IN_THE_LOCK, 60, "other thread", start_hook=False)
    assert out.stdout.strip() == "the collection waits for the lock", out.stderr[-2000:]


@pytest.mark.parametrize("where", WHERE)
def test_with_the_fix_the_failed_client_is_closed_off_the_collector(where):
    code = FAILED_CLIENT_COLLECTED_IN_THE_LOCK + (
        "import time\n"  # closed, once the lock is free, by the fix's own thread
        "deadline = time.monotonic() + 20\n"
        "while any(isinstance(o, Client) for o in gc.get_objects()) and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        "    gc.collect()\n"
        "print('left', sum(isinstance(o, Client) for o in gc.get_objects()))\n")
    out = python(code, 60, where)
    assert out.returncode == 0 and out.stdout.split() == ["collected", "left", "0"], (
        out.stdout, out.stderr[-2000:])


def import_with(tmp_path, fix: str, install: str) -> subprocess.CompletedProcess:
    """Import a module (VALUE = 1) after `fix` is defined and `install` has run."""
    (tmp_path / "aiftest_lib.py").write_text("VALUE = 1\n")
    return python(f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
                  f"from aifactory import at_start\n{fix}\n{install}\n"
                  "import aiftest_lib; print(aiftest_lib.VALUE)", 30)


BROKEN = "def broken(module): raise RuntimeError('a bug of ours')"


def test_a_fix_that_fails_leaves_the_import_as_it_was(tmp_path):
    out = import_with(tmp_path, BROKEN, "at_start.install({'aiftest_lib': broken})")
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


def test_a_fix_is_made_by_the_finder_the_start_installed(tmp_path):
    out = import_with(tmp_path, "def double(module): module.VALUE *= 2",
                      "at_start.install({'aiftest_lib': double})")
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr


def test_a_stand_in_that_fails_leaves_the_module_its_own_code(tmp_path):
    out = import_with(tmp_path, BROKEN, "at_start.install({}, {'aiftest_lib': broken})")
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


def test_the_kernel_launcher_runs_a_kernel_with_the_fixes_in_a_python_without_the_pth(tmp_path):
    """As in a person's own environment: no .pth of ours, aifactory alone on the path."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    purelib = sysconfig.get_paths()["purelib"]
    start = (f"import sys, runpy; sys.path.append({purelib!r}); "
             "runpy.run_module('aifactory.kernel_launcher', run_name='__main__', alter_sys=True)")
    spec = tmp_path / "kernels" / "aiftest"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-P", "-c", start, "-f", "{connection_file}"],
        "display_name": "aiftest", "language": "python"}))
    manager = KernelManager(kernel_name="aiftest",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    manager.start_kernel(cwd=str(tmp_path))
    printed = []
    try:
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        client.execute_interactive(
            "import sys; print(sys.flags.no_site, 'aifactory.at_start' in sys.modules)",
            timeout=60, output_hook=lambda msg: printed.append(msg["content"].get("text", "")))
        client.stop_channels()
    finally:
        manager.shutdown_kernel(now=True)
    assert "".join(printed).split() == ["1", "True"], printed  # no .pth read, fixed


IRI_CHECKS = ("import sys, jupyter_events.logger\n"  # what JupyterLab's server imports
              "from jsonschema import Draft7Validator\n"
              "print('rfc3987_syntax.syntax_helpers' in sys.modules)\n"
              "check = Draft7Validator.FORMAT_CHECKER\n"
              "print(check.conforms('http://ex.org/a b', 'iri'), check.conforms('http://ex.org/\\u00e4', 'iri'),"
              " check.conforms('#x', 'iri-reference'), check.conforms('http://[', 'iri-reference'))\n"
              "print('rfc3987_syntax.syntax_helpers' in sys.modules)\n")


def test_the_iri_grammar_is_compiled_when_first_used_not_when_jupyter_events_is_imported():
    """Compiling it took 1.3 s of every JupyterLab start here; the checks answer the same."""
    fixed = python(IRI_CHECKS, 60)
    assert fixed.stdout.split() == ["False", "False", "True", "True", "False", "True"], fixed.stderr
    unfixed = python(IRI_CHECKS, 60, start_hook=False)
    assert unfixed.stdout.split() == ["True", "False", "True", "True", "False", "True"], unfixed.stderr


def test_the_fixes_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("AIFACTORY_LIBRARY_FIXES", "off")
    out = python(IRI_CHECKS + "import distributed; print(distributed.Client.__del__.__module__)", 60)
    assert out.stdout.split() == ["True", "False", "True", "True", "False", "True",
                                  "distributed.client"], out.stderr


PACKAGE_AS_IT_IS = ("import pickle, rfc3987_syntax\n"
                    "print(rfc3987_syntax.syntax_helpers.__name__)\n"
                    "names = {}\n"
                    "exec('from rfc3987_syntax import *', names)\n"
                    "print('is_valid_syntax_iri' in names, 'make_syntax_validator' in dir(rfc3987_syntax))\n"
                    "print(pickle.loads(pickle.dumps(rfc3987_syntax.is_valid_syntax))('iri', 'http://x/'))\n")


def test_the_package_answers_as_its_own_code_would():
    """Its submodule, `import *`, dir() and pickling, with and without the stand-in."""
    expected = ["rfc3987_syntax.syntax_helpers", "True", "True", "True"]
    fixed = python(PACKAGE_AS_IT_IS, 60)
    assert fixed.stdout.split() == expected, fixed.stderr
    unfixed = python(PACKAGE_AS_IT_IS, 60, start_hook=False)
    assert unfixed.stdout.split() == expected, unfixed.stderr


def test_a_spec_only_looked_up_leaves_the_fix_for_the_import():
    out = python("import importlib.util, sys\n"
                 "importlib.util.find_spec('rfc3987_syntax')\n"
                 "import rfc3987_syntax\n"
                 "print('rfc3987_syntax.syntax_helpers' in sys.modules)", 30)
    assert out.stdout.split() == ["False"], out.stderr


def test_without_lark_the_iri_formats_go_unchecked_as_jsonschema_means():
    code = ("import sys; sys.modules['lark'] = None\n"
            "from jsonschema import Draft7Validator\n"
            "print(Draft7Validator.FORMAT_CHECKER.conforms('http://ex.org/a b', 'iri'))")
    for start_hook in (True, False):
        out = python(code, 30, start_hook=start_hook)
        assert out.stdout.split() == ["True"], (start_hook, out.stderr)
