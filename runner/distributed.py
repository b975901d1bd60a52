"""Several processes: torchrun on one machine or several, or --procs N and a device list through torchrun's own
launcher used as a library. Nothing here launches, schedules or transports anything itself.

A run trained across processes (DistributedDataParallel) has a `Group`: sums over processes, the gathered random
states, and a stop that every process agrees on at the same step. A table spreads whole runs over the processes,
each training alone (`SOLO`). With one process every Group operation is the identity, so the loop reads the same.
Waits that may be long (one process per machine preparing the data; a table's other runs) use a control group of
their own whose timeout allows for them; every timeout names what it was waiting for.
"""
import datetime
import os
import signal
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from runner.console import PASSED_ON, STOP, Stopped
from runner.errors import ProcessesLost, RunnerError
from runner.records import FAILURE_MARKER
from runner.settings import shared_gpu

LAUNCHER = "BASIC_IMAGE_CLASSIFICATION_LAUNCHER"  # set for the processes that --procs or a device list starts
TRAIN_TIMEOUT = datetime.timedelta(minutes=10)
CONTROL_TIMEOUT = datetime.timedelta(days=7)

_control = None


def launched() -> bool:
    """Started by torchrun (or by --procs through its launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_by_torchrun() -> bool:
    """Started by a torchrun command (not by --procs or a device list, which launch through torchrun's API)."""
    return launched() and LAUNCHER not in os.environ


def environment(name: str, default: int = 0) -> int:
    return int(os.environ.get(name, default))


def rank() -> int:
    """This process's rank among all (0 alone); known from torchrun's environment before and after joining."""
    return dist.get_rank() if dist.is_initialized() else environment("RANK")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else environment("WORLD_SIZE", 1)


def local_rank() -> int:
    return environment("LOCAL_RANK")


def is_writer() -> bool:
    return rank() == 0


def say(text: str) -> None:
    """Print on the first process only."""
    if is_writer():
        print(text, flush=True)


def restart_count() -> int:
    return environment("TORCHELASTIC_RESTART_COUNT")


def restarts_allowed() -> bool:
    return environment("TORCHELASTIC_MAX_RESTARTS") > 0


def start(device: torch.device) -> None:
    """Join the processes torchrun started: NCCL between GPUs, gloo on the CPU, and a gloo control group."""
    global _control
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's store outlives a restart of the processes: keep each attempt's keys apart, or restarted
        # processes find the addresses of the ones that died (pytorch/pytorch#135712).
        store = dist.PrefixStore(f"attempt-{restart_count()}", dist.TCPStore(
            os.environ["MASTER_ADDR"], environment("MASTER_PORT"), world_size(), is_master=False,
            timeout=TRAIN_TIMEOUT))
    dist.init_process_group(backend, store=store, rank=environment("RANK") if store else -1,
                            world_size=world_size() if store else -1, timeout=TRAIN_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def finish() -> None:
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def _collective(what: str, operation):
    """Run a collective of the control group; a timeout or a lost peer becomes one line naming `what`."""
    try:
        return operation()
    except (RuntimeError, dist.DistError) as error:
        why = lost_peers(error, what)
        if why is None:
            raise
        if why:
            raise ProcessesLost(why) from None
        raise PeerLost(what) from None


class PeerLost(Exception):
    """Another process of the run ended (it says why); this one ends quietly."""


def lost_peers(error: BaseException, what: str = "a collective of the training") -> str | None:
    """For an error from a collective: None when it is not one; '' when another process ended (that one says why);
    otherwise one line saying what failed or timed out."""
    if not dist.is_initialized() or not isinstance(error, (RuntimeError, dist.DistError)):
        return None
    text = str(error).lower()
    if "timeout" in text or "timed out" in text:
        return f"timed out waiting for the other processes at {what}"
    if "closed by peer" in text or "connection reset" in text or "broken pipe" in text:
        return ""
    if isinstance(error, dist.DistError):
        return f"the processes failed at {what}: {str(error).strip().splitlines()[0]}"
    return None


def everyone(what: str, value) -> list:
    """Every process's value, in rank order (the control group's all-gather)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * world_size()
    _collective(what, lambda: dist.all_gather_object(values, value, group=_control))
    return values


def from_first(what: str, value):
    """The first process's value, on every process."""
    return everyone(what, value)[0]


def on_first(what: str, work):
    """work() on the first process only; its result, or its failure as the same error, reaches every process."""
    result, failure = None, None
    if is_writer():
        try:
            result = work()
        except RunnerError as error:
            failure = str(error)
    result, failure = from_first(what, (result, failure))
    if failure:
        raise RunnerError(failure, shared=True)
    return result


def prepare_once_per_machine(what: str, work):
    """Run work() on one process per machine while the others wait, then on the others (which then find what the
    first made, e.g. a decoded cache). A failure on any process becomes the same error on every process."""
    result, failure = None, None
    if local_rank() == 0:
        try:
            result = work()
        except RunnerError as error:
            failure = str(error)
    failures = [message for message in everyone(what, failure) if message]
    if failures:
        raise RunnerError(failures[0], shared=True)
    return result if local_rank() == 0 else work()


class Group:
    """The processes one run trains across; Group() is one process alone."""

    def __init__(self, data_parallel: bool = False):
        self.data_parallel = data_parallel and dist.is_initialized()
        self.size = world_size() if self.data_parallel else 1
        self.rank = rank() if self.data_parallel else 0
        self.pending = None

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.data_parallel:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, value) -> list:
        return everyone("gathering the random states", value) if self.data_parallel else [value]

    def check_stop(self) -> None:
        """Raise Stopped when a stop was asked. Across processes the flags are combined one step late (the
        exchange runs while the next step does), so that every process stops after the same step."""
        if not self.data_parallel:
            STOP.check()
            return
        self.settle()
        flag = torch.tensor([STOP.signum or 0])
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control, async_op=True), flag)

    def settle(self) -> None:
        """At the end of a loop: act on the exchange still under way."""
        if self.pending is not None:
            work, flag = self.pending
            self.pending = None
            work.wait()
            if flag.item():
                raise Stopped(int(flag.item()))
    def wrap(self, model: torch.nn.Module, device: torch.device, sync_bn: bool) -> torch.nn.Module:
        if not self.data_parallel:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


SOLO = Group()


def process_device(name: str) -> str:
    """This process's device. Under several processes, `cuda` (and `auto` where CUDA is) is cuda:LOCAL_RANK and a
    list gives each local process its own entry; ValueError when the processes would share one GPU (NCCL refuses
    two processes on one GPU)."""
    names = name.split(",")
    local_processes = environment("LOCAL_WORLD_SIZE", 1)
    if len(names) > 1:
        if len(names) < local_processes:
            raise ValueError(f"--device {name}: {local_processes} processes on this machine need as many devices")
        return names[local_rank()]
    if not launched():
        return name
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if local_processes > torch.cuda.device_count():
            raise ValueError(f"--device {name}: {local_processes} processes on this machine but "
                             f"{torch.cuda.device_count()} CUDA GPU(s); start one process per GPU, or give "
                             "--device cpu")
        return f"cuda:{local_rank()}"
    if name.startswith("cuda:") and local_processes > 1:
        raise ValueError(shared_gpu(name, local_processes))
    return name


def process_threads(threads: int | None) -> int:
    """--threads is the machine's total: split between the processes on it."""
    total = threads or os.cpu_count() or 1
    return max(1, total // environment("LOCAL_WORLD_SIZE", 1))


def failure_marker(out: str | None) -> Path | None:
    """Where a failure that restarting cannot fix is left for restarted processes (only with --out and restarts)."""
    return Path(out) / FAILURE_MARKER if out and launched() and restarts_allowed() else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(processes: int, argv: list) -> int:
    """Run `main.py argv` in `processes` processes on this machine through torchrun's launcher (c10d rendezvous);
    returns the first failed process's exit status, or 0. A signal of the stop flag's (SIGINT and SIGTERM, or a
    Slurm task's requeue signal) is passed on to the processes, which stop on it too, and sets the flag here once
    they have stopped."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    passed_on = [signal.Signals(signum).name for signum in STOP.signals]
    handled = list(dict.fromkeys([*passed_on, "SIGHUP", "SIGQUIT"]))  # torchrun's own, SIGTERM as the flag says
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{free_port()}", run_id=f"main-{os.getpid()}", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn", signals_to_handle=",".join(handled))
    script = str(Path(__file__).resolve().parent.parent / "main.py")
    os.environ[LAUNCHER] = "main.py"
    os.environ[PASSED_ON] = ",".join(passed_on)
    handlers = {name: signal.getsignal(signal.Signals[name]) for name in handled}
    try:
        elastic_launch(config, sys.executable)("-u", script, *argv)
    except ChildFailedError as error:
        codes = [failure.exitcode for failure in error.failures.values()]
        return next((code for code in codes if code > 0), 1)
    except SignalException as stop:
        STOP.signum = stop.sigval  # the processes have stopped between two steps and said so
        return 128 + stop.sigval  # 130 after Ctrl-C, 143 after SIGTERM
    finally:
        for name, handler in handlers.items():  # the launcher's handlers replaced the command's own
            if handler is not None:
                signal.signal(signal.Signals[name], handler)
    return 0
