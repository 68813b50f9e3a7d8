"""aifactory.at_start: fixes of library faults that every Python of a session has from its
start, without the person importing aifactory. Each case runs in a Python of its own (the
shared venv's, with its aifactory-start.pth, or one started without it)."""

import json
import subprocess
import sys
import sysconfig

import pytest

# A Client whose start failed (TLS without TLS settings) stays in a reference cycle; the
# garbage collector then finalizes it while another Client holds LoopRunner's lock to start
# (done here by hand, as it happens by chance in a notebook's second or third Client).
FAILED_CLIENT_COLLECTED_IN_THE_LOCK = """
import gc
gc.disable()
from distributed import Client
from distributed.utils import LoopRunner
try:
    Client("tls://127.0.0.1:1", timeout=2)
except TypeError:
    pass
assert any(isinstance(o, Client) for o in gc.get_objects()), "no failed Client left over"
with LoopRunner._lock:
    gc.collect()
print("no hang")
"""


def python(code: str, timeout: float, start_hook: bool = True) -> subprocess.CompletedProcess:
    if start_hook:  # the shared venv's Python as every session process starts it
        argv = [sys.executable, "-P", "-c", code]
    else:  # the same packages, but no .pth file is read (so no aifactory.at_start)
        purelib = sysconfig.get_paths()["purelib"]
        argv = [sys.executable, "-S", "-P", "-c", f"import sys; sys.path.append({purelib!r})\n" + code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")


def test_the_venv_loads_the_fixes_at_start_and_imports_no_library_for_them():
    out = python("import sys; print(sorted(m for m in ('aifactory.at_start', 'ssl', "
                 "'distributed', 'ctypes') if m in sys.modules))", 30)
    assert out.stdout.split() == ["['aifactory.at_start']"], out.stderr


def test_each_fix_is_made_when_its_library_is_imported():
    out = python("import ssl, sys, threading, distributed.utils\n"
                 "print(sys.modules['aifactory.ssl_fix'].INSTALLED, "
                 "ssl.SSLSocket._aifactory_clears_errors, "
                 "type(distributed.utils.LoopRunner._lock) is type(threading.RLock()))", 60)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


def test_without_the_fix_a_failed_client_collected_in_the_loop_lock_hangs_for_ever():
    """The fault itself, in distributed as released: the same thread waits for its own lock."""
    with pytest.raises(subprocess.TimeoutExpired):
        python(FAILED_CLIENT_COLLECTED_IN_THE_LOCK, 10, start_hook=False)


def test_with_the_fix_the_failed_client_is_closed_and_nothing_hangs():
    out = python(FAILED_CLIENT_COLLECTED_IN_THE_LOCK, 60)
    assert out.returncode == 0 and out.stdout.strip() == "no hang", out.stderr[-2000:]


def test_a_fix_that_fails_leaves_the_import_as_it_was(tmp_path):
    (tmp_path / "aiftest_lib.py").write_text("VALUE = 1\n")
    out = python(f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
                 "from aifactory import at_start\n"
                 "def broken(module): raise RuntimeError('a bug of ours')\n"
                 "at_start.install({'aiftest_lib': broken})\n"
                 "import aiftest_lib; print(aiftest_lib.VALUE)", 30)
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
