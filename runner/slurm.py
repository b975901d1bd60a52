"""--slurm: a table, sweep or ablation submitted as a Slurm job array through submitit. Every task runs the same
command on the same results folder, so the tasks divide its runs by claiming them (results.run_table); a task
with nothing left to take ends. A task that Slurm preempts or times out is requeued by submitit: its signal
(SIGUSR2 on Slurm) sets the runner's stop flag (a task of several processes passes it on to them), the run stops
between two steps and releases its claim, and only then does submitit requeue the task, which continues the run from
its checkpoint."""
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import submitit

from runner.cli_words import command_words
from runner.console import STOP
from runner.errors import RunnerError
from runner.records import SLURM_LOGS

SUBMITTERS = {"force", "retry_failed"}  # the submitting command's alone: it did them, once


class Task(submitit.helpers.Checkpointable):
    """One array task: the command (a function of its words, train_command.run, given by the submitting command: this
    module imports none of the command line) in this task's process; requeued with the same arguments when
    preempted."""

    def __init__(self, command: Callable[[list], int], argv: list):
        self.command = command
        self.argv = argv

    def __call__(self, index: int) -> int:
        requeue_signal = next((signum for signum in (signal.SIGUSR2, signal.SIGUSR1)
                               if callable(signal.getsignal(signum))), None)
        requeue = signal.getsignal(requeue_signal) if requeue_signal else None
        if requeue_signal:
            STOP.signals = (signal.SIGINT, requeue_signal)  # SIGTERM stays ignored, as submitit set it
        code = self.command(self.argv)
        if requeue and STOP.signum == requeue_signal:
            print(f"task {index}: preempted or timed out; its claim is released, requeueing", file=sys.stderr)
            requeue(requeue_signal, None)  # submitit: checkpoint, requeue, exit
        if code not in (0, 3):
            raise RunnerError(f"task {index} of the array ended with exit status {code}: see its log")
        return code


def task_argv(parser, args, results_dir: Path, gpus: int) -> list:
    """The command each task runs: this one without the Slurm options, --force and --retry-failed, on the results
    folder, with one process per GPU of the task (each taking whole runs of its own) when it has several."""
    slurm_options = {name for name in vars(args) if name == "slurm" or name.startswith("slurm_")}
    return command_words(parser, args, without=slurm_options | SUBMITTERS, out=results_dir.resolve(),
                         procs=args.procs or (gpus if gpus > 1 else None))


def check_cluster(executor: str | None) -> None:
    """Before anything is made: Slurm's commands must be here, unless the array runs on submitit's local executor."""
    if (executor or "slurm") == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise RunnerError("--slurm: no Slurm here (no srun on the PATH): submit from the cluster's login node, or "
                          "try the array on this machine with --slurm-executor local")


def submit(parser, args, results_dir: Path, runs: int, command: Callable[[list], int]) -> list:
    """Submit the array (one task per run unless --slurm-tasks says otherwise) on a results folder whose runs are
    placed, each task running `command` on its words; returns the job ids."""
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    executor = submitit.AutoExecutor(folder=results_dir / SLURM_LOGS / "%j", cluster=args.slurm_executor or "slurm")
    gpus = args.slurm_gpus or 0
    executor.update_parameters(name=f"main.py-{results_dir.name}", timeout_min=args.slurm_time or 60,
                               gpus_per_node=gpus, tasks_per_node=1, cpus_per_task=args.slurm_cpus or 1,
                               slurm_array_parallelism=args.slurm_array_parallelism or 256,
                               **({"slurm_partition": args.slurm_partition} if args.slurm_partition else {}))
    task = Task(command, task_argv(parser, args, results_dir, gpus))
    jobs = executor.map_array(task, range(args.slurm_tasks or runs))
    return [job.job_id for job in jobs]
