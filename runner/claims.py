"""Claims: which process trains which run of a results folder, so that copies of one command (terminals, machines
on a shared disk, Slurm array tasks, torchrun's processes) divide its runs between them, each run trained once.

A claim is a small JSON file in the run's folder. It is made with a hard link from a file already written, which
either creates the name or fails when it exists, atomically on a local disk and on NFS alike (no flock, no state
in memory shared by processes). Its owner rewrites it with a higher heartbeat from a thread of its own, so a long
first decode, a compilation or a slow epoch never lets it lapse. Another process watches a claim on its own
monotonic clock, never a file's time against its clock (machines' clocks differ): when the heartbeat has not moved
for a lease, the owner died, and the claim is taken over by renaming it away (one rename wins; the others go on)
and linking a new one. Processes that torchrun restarted take their own group's claims back at once.
"""
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from runner.errors import RunnerError
from runner.files import write_text
from runner.records import CLAIM

DEFAULT_LEASE = 180.0  # seconds without a heartbeat after which a claim's owner is taken for dead


class ClaimLost(RunnerError):
    """Another process took this one's run over (its heartbeat had lapsed): this process leaves the run to it."""

    permanent = False


def read_claim(folder: Path) -> dict | None:
    """The claim on a run folder, or None. Claims are written whole, so one that does not parse is foreign: it
    is read as an owner that never beats (and so lapses after a lease)."""
    try:
        record = json.loads((Path(folder) / CLAIM).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def torchrun_group() -> str | None:
    """The processes of one torchrun launch on this machine (its agent is their parent), or None outside one."""
    from runner import distributed  # here, so that `status` imports no torch

    if not distributed.launched():
        return None
    return f"{socket.gethostname()}:{os.getppid()}:{os.environ.get('TORCHELASTIC_RUN_ID', '')}"


def owner_text(record: dict) -> str:
    """Who holds a claim, as a person reads it."""
    if not record:
        return "an unreadable claim"
    return f"{record.get('host', '?')} pid {record.get('pid', '?')} (since {record.get('started', '?')}, " \
           f"heartbeat {record.get('beat', '?')})"


class Claim:
    """This process's claim on one run folder, with its heartbeat thread; `check` before each checkpoint write."""

    def __init__(self, folder: Path, lease: float):
        from runner import distributed

        self.folder, self.lease = Path(folder), lease
        self.record = dict(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                           group=torchrun_group(), attempt=distributed.restart_count(),
                           started=datetime.now().astimezone().isoformat(timespec="seconds"), beat=0)
        self.lost = False
        self.stopped = threading.Event()
        self.thread = None

    @property
    def path(self) -> Path:
        return self.folder / CLAIM

    def link(self) -> bool:
        """Create the claim file from a finished temporary one; False when a claim exists already."""
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f"{CLAIM}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as f:
                f.write(json.dumps(self.record))
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def start(self) -> "Claim":
        self.thread = threading.Thread(target=self.beat, name=f"claim heartbeat {self.folder.name}", daemon=True)
        self.thread.start()
        return self

    def beat(self) -> None:
        """Raise the heartbeat while the claim is this process's own; stop once another took it over."""
        while not self.stopped.wait(heartbeat_interval(self.lease)):
            if not self.holds():
                self.lost = True
                return
            self.record["beat"] += 1
            try:
                write_text(self.path, json.dumps(self.record))
            except OSError:
                continue  # a full or flaky disk: the next beat tries again

    def holds(self) -> bool:
        return (read_claim(self.folder) or {}).get("token") == self.record["token"]

    def check(self) -> None:
        if self.lost or not self.holds():
            self.lost = True
            raise ClaimLost(f"{self.folder} was taken over by {owner_text(read_claim(self.folder) or {})} after "
                            f"this process's heartbeat lapsed for {self.lease:g} s; it goes on there")

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, if it is still this process's."""
        self.stopped.set()
        if self.thread:
            self.thread.join()
        if not self.lost and self.holds():
            self.path.unlink(missing_ok=True)


def heartbeat_interval(lease: float) -> float:
    return min(30.0, lease / 6)


def poll_interval(lease: float) -> float:
    """How often a waiting process reads the claims it watches."""
    return min(2.0, lease / 10)


class Watcher:
    """One process's view of the claims it has met: a claim is stale once its heartbeat has stood still for a
    lease on this process's monotonic clock, or at once when it belongs to this torchrun group's earlier attempt."""

    def __init__(self, lease: float = DEFAULT_LEASE):
        self.lease = lease
        self.seen = {}  # folder -> ((token, beat), monotonic time first seen so)

    def stale(self, folder: Path, record: dict) -> bool:
        from runner import distributed

        group = torchrun_group()
        if group and record.get("group") == group and record.get("attempt", 0) < distributed.restart_count():
            return True
        now, key = time.monotonic(), (record.get("token"), record.get("beat"))
        seen = self.seen.get(folder)
        if seen is None or seen[0] != key:
            self.seen[folder] = (key, now)
            return False
        return now - seen[1] >= self.lease

    def take(self, folder: Path) -> Claim | None:
        """A claim on the run folder for this process: a free one, or one taken over from a dead owner; None when
        a live process holds it (or another process won the race)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        claim = Claim(folder, self.lease)
        if claim.link():
            return claim.start()
        record = read_claim(folder)
        if record is None or not self.stale(folder, record):
            return None
        return claim.start() if self.take_over(folder, record) and claim.link() else None

    def take_over(self, folder: Path, record: dict) -> bool:
        """Move a stale claim out of the way: True when this process's rename won and the claim it moved is the
        very one it judged stale (an owner that beat meanwhile gets its claim back)."""
        moved = folder / f"{CLAIM}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(folder / CLAIM, moved)
        except FileNotFoundError:
            return False
        try:
            current = json.loads(moved.read_text())
        except (OSError, ValueError):
            current = {}
        if (current.get("token"), current.get("beat")) != (record.get("token"), record.get("beat")):
            try:
                os.link(moved, folder / CLAIM)
            except FileExistsError:
                pass
            moved.unlink(missing_ok=True)
            return False
        moved.unlink(missing_ok=True)
        self.seen.pop(folder, None)
        return True

    def live(self, folders: list) -> list:
        """(folder, claim) for each folder whose claim is not stale by now."""
        claimed = [(folder, read_claim(folder)) for folder in folders]
        return [(folder, record) for folder, record in claimed if record is not None
                and not self.stale(Path(folder), record)]
