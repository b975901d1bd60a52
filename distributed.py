"""Several processes under torchrun: who writes, sums over processes, and the model wrapped for data parallelism.
With one process every function here is the identity, so the loop reads the same either way."""
import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_writer() -> bool:
    return rank() == 0


def say(text: str) -> None:
    """Print on the writing process only."""
    if is_writer():
        print(text, flush=True)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor)
    return tensor


def gather(value) -> list:
    """Every process's value, in rank order."""
    if not active():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
