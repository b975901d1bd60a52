"""tests/forked.py: a fork ends as a fresh interpreter would, with its own arguments, environment, folder and exit."""
import atexit
import os
import signal
import subprocess
import sys

import pytest

import forked

ENDS = """
import atexit, os, sys
atexit.register(lambda: print("exit functions ran", flush=True))
print(__name__, sys.argv[1:], os.getcwd(), os.environ.get("PROBE"), flush=True)
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_a_fork_runs_its_command_as_main_with_its_own_arguments_environment_and_folder(tmp_path):
    def the_tests_exit_function():
        print("the test's exit functions ran")

    atexit.register(the_tests_exit_function)
    try:
        done = forked.run([sys.executable, "-c", ENDS, "3", "x"], env=dict(os.environ, PROBE="here"), cwd=tmp_path)
    finally:
        atexit.unregister(the_tests_exit_function)
    assert done.returncode == 3
    assert done.stdout.splitlines() == [f"__main__ ['3', 'x'] {tmp_path} here", "exit functions ran"]
    assert done.stderr == "to stderr\n" and os.environ.get("PROBE") is None and os.getcwd() != str(tmp_path)


def test_a_script_a_module_and_uncaught_errors_end_as_in_an_interpreter(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint(sys.argv)\nraise ValueError('broken')\n")
    done = forked.run([sys.executable, script, "a"])
    assert done.returncode == 1 and done.stdout == f"[{str(script)!r}, 'a']\n" and "ValueError: broken" in done.stderr
    done = forked.run([sys.executable, "-m", "json.tool", "--help"])
    assert done.returncode == 0 and "usage:" in done.stdout
    done = forked.run([sys.executable, "-c", "raise KeyboardInterrupt"])
    assert done.returncode == -signal.SIGINT and "KeyboardInterrupt" in done.stderr


def test_signals_reach_the_fork_and_it_can_be_waited_for_with_a_timeout():
    process = forked.start([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0.1)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == -signal.SIGTERM and process.communicate() == ("", "")


def test_a_fork_is_refused_more_than_one_thread_but_torchruns_workers_are_not():
    with pytest.raises(ValueError, match="one thread"):
        forked.start([sys.executable, "main.py", "1", "--threads", "2"])
    assert forked.threads_asked([sys.executable, "-m", "torch.distributed.run", "main.py", "--threads", "2"]) == 1
