"""Claims: which process trains which run of a results folder, so that copies of one command (terminals, machines
on a shared disk, Slurm array tasks, torchrun's processes) divide its runs between them, each run trained once.

A claim is a small JSON file, `.claim`, in the run's folder, naming its owner and the lease it keeps. It is made
with a hard link from a file already written, which either creates the name or fails when it exists, atomically on
a local disk and on NFS alike (no flock, no state in memory shared by processes). While a process holds it, the
claim file itself never changes and never goes missing: its owner beats in a file of its own (`.claim.beat.TOKEN`)
from a thread, so a long first decode, a compilation or a slow epoch never lets it lapse; and a process holds the
run exactly while `.claim` carries its token.

Another process watches a claim on its own monotonic clock, never a file's time against its clock (machines'
clocks differ): when the owner's heartbeat has not moved for the lease written in the claim, the owner died. An
owner known to be gone is judged at once: its claim was made on this very boot of this machine, in this process
namespace, and its process no longer exists (a host name alone proves nothing: containers share them). So are
claims of this torchrun launch's earlier attempt. A stale claim is replaced, never removed: the taker first takes
the folder's takeover lock (`.claim.lock`, one linker wins), checks under it that the claim is still the very one
it judged stale, and renames its own claim over it. The owner gives its claim up under the same lock.
"""
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from runner.errors import RunnerError
from runner.records import CLAIM

DEFAULT_LEASE = 180.0  # seconds without a heartbeat after which a claim's owner is taken for dead
LOCK = CLAIM + ".lock"  # held for an instant by whoever replaces or removes a claim
BEAT = CLAIM + ".beat."  # + the owner's token: its heartbeat counter
TOKEN = re.compile(r"[0-9a-f]{32}")
NO_HARD_LINKS = "claims need a file system with hard links, which {folder} lacks (some FUSE and SMB mounts): put " \
                "the results folder (--out) on a local disk or NFS, or run one copy of the command"


class ClaimLost(RunnerError):
    """Another process took this one's run over (its heartbeat had lapsed): this process leaves the run to it."""

    permanent = False


@lru_cache(maxsize=1)
def this_machine() -> tuple:
    """(boot id, pid namespace) of this process, where Linux tells them; (None, None) elsewhere."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None, None
    return boot, namespace


def owner_alive(record: dict) -> bool | None:
    """Whether a claim's owner process exists, where that is certain: it ran on this boot of this machine, in this
    pid namespace (a host name alone proves nothing: containers and Slurm's container plugins share them). None
    for any other claim (another machine, a container, a claim of the release before)."""
    boot, namespace = this_machine()
    pid = record.get("pid")
    if boot is None or record.get("boot") != boot or record.get("pidns") != namespace or not isinstance(pid, int) \
            or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def owner_gone(record: dict) -> bool:
    return owner_alive(record) is False


def read_beat(folder: Path, token) -> int | None:
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        return None
    try:
        return int((Path(folder) / (BEAT + token)).read_text())
    except (OSError, ValueError):
        return None


def read_record(path: Path) -> dict | None:
    """A claim file's record, or None when there is none. Claims are written whole, so one that does not parse is
    foreign: it is read as an owner that never beats (and so lapses after the reader's lease)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def read_claim(folder: Path) -> dict | None:
    """The claim on a run folder with its owner's heartbeat as `beat`, or None."""
    record = read_record(Path(folder) / CLAIM)
    if record:
        beat = read_beat(folder, record.get("token"))
        record["beat"] = record.get("beat", 0) if beat is None else beat
    return record


def lease_of(record: dict) -> float:
    """The lease a claim keeps, as its owner wrote it (claims of the release before carry none: the default)."""
    lease = record.get("lease")
    return float(lease) if isinstance(lease, (int, float)) and lease > 0 else DEFAULT_LEASE


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


def link_new(source: Path, target: Path) -> bool:
    """Hard-link source as target: True when target was made, False when it exists. NFS may answer EEXIST to a
    retransmitted link that did succeed: the source's link count tells (open(2)'s notes)."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        return os.stat(source).st_nlink == 2
    except OSError as error:
        if error.errno in (1, 38, 95):  # EPERM, ENOSYS, EOPNOTSUPP: no hard links on this file system
            raise RunnerError(NO_HARD_LINKS.format(folder=target.parent)) from None
        raise


def written(folder: Path, record: dict) -> str:
    """A finished temporary file in folder holding the record (the caller removes it)."""
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f"{CLAIM}.", suffix=".tmp")
    with os.fdopen(handle, "w") as f:
        f.write(json.dumps(record))
    return temporary


class Lock:
    """A folder's takeover lock: held for an instant while a claim is replaced or given up. One left by a process
    that died holding it is removed when its owner is certainly gone, or after it stood unchanged for a lease."""

    def __init__(self, folder: Path, watcher: "Watcher"):
        self.folder, self.watcher = Path(folder), watcher
        self.path = self.folder / LOCK

    def acquire(self) -> bool:
        record = dict(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), **machine_fields())
        temporary = written(self.folder, record)
        try:
            if link_new(Path(temporary), self.path):
                return True
        finally:
            os.unlink(temporary)
        held = read_record(self.path)
        if held is not None and (owner_gone(held) or self.watcher.unchanged_for(self.path, held, DEFAULT_LEASE)):
            self.watcher.move_away(self.path, held)  # its holder died inside: the next try may take it
        return False

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def machine_fields() -> dict:
    boot, namespace = this_machine()
    return dict(boot=boot, pidns=namespace)


class Claim:
    """This process's claim on one run folder, with its heartbeat thread; `check` before each checkpoint write."""

    def __init__(self, folder: Path, lease: float):
        from runner import distributed

        self.folder, self.lease = Path(folder), lease
        self.record = dict(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), **machine_fields(),
                           group=torchrun_group(), attempt=distributed.restart_count(), lease=lease,
                           started=datetime.now().astimezone().isoformat(timespec="seconds"))
        self.beats = 0
        self.lost = False
        self.stopped = threading.Event()
        self.thread = None

    @property
    def path(self) -> Path:
        return self.folder / CLAIM

    @property
    def beat_path(self) -> Path:
        return self.folder / (BEAT + self.record["token"])

    def written(self) -> str:
        """A temporary file holding this claim, its heartbeat file written first (the claim is never without it)."""
        self.write_beat()
        return written(self.folder, self.record)

    def link(self) -> bool:
        """Create the claim file from a finished temporary one; False when a claim exists already."""
        temporary = self.written()
        try:
            made = link_new(Path(temporary), self.path)
        finally:
            os.unlink(temporary)
        if not made:
            self.beat_path.unlink(missing_ok=True)
        return made

    def replace(self) -> None:
        """Put this claim in place of the one there (the caller holds the folder's lock)."""
        temporary = self.written()
        try:
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise

    def write_beat(self) -> None:
        """Renamed into place, so that a reader never sees the file empty between truncation and write (only this
        process writes this token's file, so its temporary name is fixed)."""
        temporary = self.beat_path.with_name(self.beat_path.name + ".tmp")
        temporary.write_text(str(self.beats))
        os.replace(temporary, self.beat_path)

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
            self.beats += 1
            try:
                self.write_beat()
            except OSError:
                continue  # a full or flaky disk: the next beat tries again

    def holds(self) -> bool:
        return (read_record(self.path) or {}).get("token") == self.record["token"]

    def check(self) -> None:
        if self.lost or not self.holds():
            self.lost = True
            record = read_claim(self.folder)
            raise ClaimLost(f"{self.folder} was taken over by "
                            f"{owner_text(record) if record else 'another copy, which has ended it since'}, after "
                            f"this process's heartbeat stood still for its lease ({self.lease:g} s); it goes on there")

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, under the folder's lock, if it is still this process's."""
        self.stopped.set()
        if self.thread:
            self.thread.join()
        lock = Lock(self.folder, Watcher(self.lease))
        deadline = time.monotonic() + 5
        while not lock.acquire():
            if time.monotonic() > deadline:  # a taker holds it: the run is being taken, so it is not ours to free
                self.beat_path.unlink(missing_ok=True)
                return
            time.sleep(0.01)
        try:
            if not self.lost and self.holds():
                self.path.unlink(missing_ok=True)
        finally:
            lock.release()
            self.beat_path.unlink(missing_ok=True)


def heartbeat_interval(lease: float) -> float:
    return min(30.0, lease / 6)


def poll_interval(lease: float) -> float:
    """How often a waiting process reads the claims it watches."""
    return min(2.0, lease / 10)


class Watcher:
    """One process's view of the claims it has met: a claim is stale once its heartbeat has stood still for the
    claim's lease on this process's monotonic clock, or at once when its owner is certainly gone or belongs to this
    torchrun group's earlier attempt. `lease` is the lease this process's own claims keep."""

    def __init__(self, lease: float = DEFAULT_LEASE):
        self.lease = lease
        self.seen = {}  # path -> ((token, beat), monotonic time first seen so)
        self.refused = 0  # links refused in a row with no claim to show for it

    def unchanged_for(self, path: Path, record: dict, lease: float) -> bool:
        """Whether the record at path has stood unchanged for lease seconds of this process's watching."""
        now, key = time.monotonic(), (record.get("token"), record.get("beat"))
        seen = self.seen.get(path)
        if seen is None or seen[0] != key:
            self.seen[path] = (key, now)
            return False
        return now - seen[1] >= lease

    def stale(self, folder: Path, record: dict) -> bool:
        from runner import distributed

        group = torchrun_group()
        if group and record.get("group") == group and record.get("attempt", 0) < distributed.restart_count():
            return True
        if owner_gone(record):
            return True
        return self.unchanged_for(Path(folder) / CLAIM, record, self.lease_for(record))

    def lease_for(self, record: dict | None) -> float:
        """The lease a claim is judged by: the one it carries; for a claim that does not parse (no owner wrote it),
        this process's own."""
        return lease_of(record) if record else self.lease

    def stale_at(self, folder: Path, record: dict) -> float:
        """When (time.time()) the claim lapses if its heartbeat stands still from now on, as far as this process
        has watched it."""
        key = (record.get("token"), record.get("beat"))
        seen = self.seen.get(Path(folder) / CLAIM)
        first = seen[1] if seen and seen[0] == key else time.monotonic()
        return time.time() + first + self.lease_for(record) - time.monotonic()

    def take(self, folder: Path) -> Claim | None:
        """A claim on the run folder for this process: a free one, or one taken over from a dead owner; None when
        a live process holds it (or another process won the race)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        claim = Claim(folder, self.lease)
        if claim.link():
            self.refused = 0
            return claim.start()
        record = read_claim(folder)
        if record is None:  # refused, yet no claim reads back (a file system's passing view): back off
            self.refused += 1
            time.sleep(min(poll_interval(self.lease), 0.01 * 2 ** min(self.refused, 10)))
            return None
        if not self.stale(folder, record):
            return None
        return claim.start() if self.take_over(folder, record, claim) else None

    def take_over(self, folder: Path, record: dict, claim: Claim) -> bool:
        """Replace a stale claim by this process's, under the folder's lock, if it is still the very claim judged
        stale (an owner that beat meanwhile keeps it); True when this process's claim is now in place."""
        lock = Lock(folder, self)
        if not lock.acquire():
            return False
        try:
            current = read_claim(folder)
            same = current is not None and (current.get("token"), current.get("beat")) == \
                (record.get("token"), record.get("beat"))
            if not same:
                return False
            claim.replace()
            token = record.get("token")
            if isinstance(token, str) and TOKEN.fullmatch(token):
                (folder / (BEAT + token)).unlink(missing_ok=True)
        finally:
            lock.release()
        self.seen.pop(folder / CLAIM, None)
        return True

    def move_away(self, path: Path, record: dict) -> None:
        """Remove a stale file that others may remove at the same moment: rename it away (one rename wins) and put
        it back if what moved is not the very file judged stale."""
        moved = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(path, moved)
        except FileNotFoundError:
            return
        if (read_record(moved) or {}).get("token") != record.get("token"):
            try:
                os.link(moved, path)
            except FileExistsError:
                pass
        moved.unlink(missing_ok=True)
        self.seen.pop(path, None)

    def live(self, folders: list) -> list:
        """(folder, claim) for each folder whose claim is not stale by now."""
        claimed = [(folder, read_claim(folder)) for folder in folders]
        return [(folder, record) for folder, record in claimed if record is not None
                and not self.stale(Path(folder), record)]
