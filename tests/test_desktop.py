"""The desktop's X session runner (aifactory.desktop): what the session leaves behind, detached
or not, ends with it, and a TERM (Slurm's cancel) ends everything."""

import os
import signal
import subprocess
import sys
import time

RUNNER = [sys.executable, "-P", "-m", "aifactory.desktop"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_what_the_session_detached_ends_when_the_session_ends():
    # `setsid sleep &` from a shell that then exits: the sleep is orphaned, as dbus-daemon is.
    run = subprocess.run([*RUNNER, "sh", "-c", "setsid sleep 600 & echo $!; exit 3"],
                         capture_output=True, text=True, timeout=30)
    detached = int(run.stdout)
    assert run.returncode == 3  # the session's own status
    assert gone(detached)


def test_term_ends_the_session_and_what_it_detached_even_if_they_ignore_term():
    runner = subprocess.Popen(
        [*RUNNER, "sh", "-c", "setsid sh -c 'trap \"\" TERM; sleep 600' & echo $!; exec sleep 600"],
        stdout=subprocess.PIPE, text=True)
    detached = int(runner.stdout.readline())
    time.sleep(0.5)  # the detached shell has set its trap
    started = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(30) == 143
    assert gone(detached)
    assert time.monotonic() - started >= 4  # it was asked first, then killed


def test_a_command_is_required():
    run = subprocess.run(RUNNER, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "usage" in run.stderr
