"""What a person at the terminal sees and does: progress bars, and Ctrl-C or SIGTERM.

A signal only sets a flag. The long loops (training steps, test batches, decoded images) check it between items,
so a stop never lands inside a file write, a finalizer or a half-made step; the caller then keeps what is
finished. A second signal stops at once, except under several processes, where every process must stop after the
same step (torchrun also forwards the terminal's Ctrl-C, so each process sees two). The processes that --procs
launches stop on the launcher's signals too (a Slurm task's requeue signal), which it passes on to them.
"""
import os
import signal
import sys

from tqdm import tqdm

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
PASSED_ON = "BASIC_IMAGE_CLASSIFICATION_STOP_SIGNALS"  # the signals a launcher passes on to its processes


def passed_on_signals() -> tuple:
    """The signals that stop this process: SIGINT, SIGTERM and those its launcher passes on (see PASSED_ON)."""
    names = [name for name in os.environ.get(PASSED_ON, "").split(",") if name]
    return tuple(dict.fromkeys([*EXIT_CODES, *(signal.Signals[name] for name in names)]))


class Stopped(BaseException):
    """A stop was asked for by a signal; exit_code is 130 (SIGINT) or 143 (SIGTERM). Like KeyboardInterrupt it is
    no error, so no `except Exception` (a failed download, a damaged cache) can mistake it for one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = EXIT_CODES.get(signum, 128 + signum)


class StopFlag:
    """Set by SIGINT/SIGTERM (or the signals given); `check` raises Stopped once it is set."""

    def __init__(self):
        self.signum = None
        self.previous = {}
        self.second_stops_at_once = True
        self.signals = passed_on_signals()  # a Slurm task stops on its requeue signal instead of SIGTERM (slurm.py)

    def install(self, second_stops_at_once: bool = True) -> None:
        self.signum = None
        self.second_stops_at_once = second_stops_at_once
        for signum in self.signals:
            self.previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None and self.second_stops_at_once:
            raise Stopped(signum)
        self.signum = self.signum or signum

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)


STOP = StopFlag()


class progress:
    """Iterate with a tqdm bar on stderr, shown only to a person watching a terminal; `show` puts values beside
    the bar."""

    def __init__(self, iterable, description: str, quiet: bool = False, total: int | None = None):
        self.bar = tqdm(iterable, desc=description, total=total, disable=quiet or not sys.stderr.isatty(),
                        file=sys.stderr, dynamic_ncols=True)

    def __iter__(self):
        with self.bar:
            yield from self.bar

    def show(self, **values) -> None:
        self.bar.set_postfix(values, refresh=False)
