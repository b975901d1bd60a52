"""Failures a user can act on: main.py prints the one-line message and exits with the status, never a traceback."""


class RunnerError(Exception):
    """A runtime failure (exit 1): missing or damaged data, divergence, out of memory. `permanent`:
    starting again would meet it again."""

    exit_code = 1
    permanent = True

    def __init__(self, message: str, shared: bool = False):
        """shared: every process of a run meets this same failure, so the first alone reports it."""
        super().__init__(message)
        self.shared = shared


class DataError(RunnerError):
    """A dataset is missing, cannot be downloaded, or a file in it is damaged."""


class Diverged(RunnerError):
    """The loss of a run diverged: that run failed, and in a sweep the others go on."""


class CheckpointError(RunnerError):
    """A checkpoint is missing, damaged, unsafe or belongs to another run."""


class ProcessesLost(RunnerError):
    """Processes of a run stopped hearing from each other; a restart may well succeed."""

    permanent = False


class OthersTraining(RunnerError):
    """A copy of a table's command has nothing left to train while other copies still train runs (exit 3): not a
    failure, so it is told without "error:"."""

    exit_code = 3
    permanent = False
