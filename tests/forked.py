"""Processes of their own, started as forks of the test's process rather than as fresh interpreters.

A test that signals, kills or races a run needs it in a process of its own, but a fresh `python main.py` spends about
five seconds of CPU importing torch before it does anything; a fork of the test's process has torch and the runner
imported already. The child then runs the command as `python` would: `SCRIPT ARGS`, `-c CODE ARGS` or
`-m MODULE ARGS`, as `__main__`, with its own arguments, environment, working folder, signals and exit functions,
and ends with the status a fresh interpreter would. What the test's process imported stays imported, so a test of
start-up itself (what a command imports, how long it takes) starts a fresh interpreter with `subprocess` instead.
Processes that the runner starts (torchrun's workers, `--procs` copies, Slurm tasks) are always fresh.
"""
import atexit
import faulthandler
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import traceback


def start(command: list, env: dict | None = None, cwd=None, stdout=None, stderr=None):
    """subprocess.Popen(command, stdout=stdout or PIPE, stderr=stderr or PIPE, text=True, ...), forked where that
    is safe: on Linux (on macOS, a fork without exec of a process that has used system frameworks may crash, so
    there it is a subprocess). stdout and stderr: open files, or None to read them from communicate()."""
    if sys.platform != "linux":
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout or subprocess.PIPE,
                                stderr=stderr or subprocess.PIPE, text=True)
    if threads_asked(command) > 1:
        raise ValueError("a forked process computes on one thread: OpenMP's threads do not survive a fork")
    return Forked(command, env, cwd, stdout, stderr)


def import_what_runs_import() -> None:
    """Import what a run imports on its way (torch.optim imports torch._dynamo as a run makes its optimizer), in the
    process that will fork, so that no fork imports it again."""
    import torch._dynamo  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401
    import torchvision  # noqa: F401

    from runner import plots  # noqa: F401


def threads_asked(command: list) -> int:
    """The --threads a command gives its own process (torchrun's is for its workers, which are fresh processes)."""
    words = [str(word) for word in command]
    if "--threads" not in words or words[1:3] == ["-m", "torch.distributed.run"]:
        return 1
    return int(words[words.index("--threads") + 1])


class Forked:
    """The part of subprocess.Popen the tests use, for a command `[sys.executable, ...]`; stdout and stderr are
    text, read once the process has ended."""

    def __init__(self, command: list, env: dict | None = None, cwd=None, stdout=None, stderr=None):
        if command[0] != sys.executable:
            raise ValueError(f"a forked process runs Python, not {command[0]}")
        self.args = [str(word) for word in command]
        self.returncode = None
        self.outputs = [given or tempfile.TemporaryFile() for given in (stdout, stderr)]
        self.captured = [given is None for given in (stdout, stderr)]
        environment = dict(os.environ if env is None else env)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            become(self.args[1:], environment, cwd, [output.fileno() for output in self.outputs])
        self.ended = os.pidfd_open(self.pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self.ended)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not select.select([self.ended], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(self.args, timeout)
        while self.poll() is None:  # readable, so ended: the status is there
            pass
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return tuple(read(output) if captured else None for output, captured in zip(self.outputs, self.captured))

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def read(output) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")


def run(command: list, env: dict | None = None, cwd=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True, ...) in a fork; a process past its timeout is killed."""
    process = start(command, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def become(argv: list, environment: dict, cwd, outputs: list) -> None:
    """In the child: run argv as `python ARGV` would, then end the process with its status (never return)."""
    status = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        for target, source in zip((0, 1, 2), (null, *outputs)):
            os.dup2(source, target)
        sys.stdin = sys.__stdin__ = open(0, closefd=False)
        unbuffered = bool(environment.get("PYTHONUNBUFFERED"))
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)
        faulthandler.disable()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        atexit._clear()  # the test's process's exit functions are not this process's
        if cwd is not None:
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environment)
        status = run_as_main(argv)
    except KeyboardInterrupt:
        traceback.print_exc()
        status = -signal.SIGINT  # as an interpreter ends on an uncaught KeyboardInterrupt
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            if status < 0:
                signal.signal(-status, signal.SIG_DFL)
                os.kill(os.getpid(), -status)
        finally:
            os._exit(status if status >= 0 else 1)  # whatever happened, the child never returns into the test


def run_as_main(argv: list) -> int:
    """Run `-c CODE ...`, `-m MODULE ...` or `SCRIPT ...` as __main__; the status its SystemExit gives."""
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    return 0
