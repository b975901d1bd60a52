"""Failures a user can act on: main.py prints the one-line message and exits with the status, never a traceback."""


class RunnerError(Exception):
    """A runtime failure (cli.md: exit 1): missing or damaged data, divergence, out of memory."""

    exit_code = 1


class DataError(RunnerError):
    """A dataset is missing, cannot be downloaded, or a file in it is damaged."""


class CheckpointError(RunnerError):
    """A checkpoint is missing, damaged, unsafe or belongs to another run."""
