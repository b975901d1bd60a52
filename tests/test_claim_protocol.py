"""The claim protocol (runner/claims.py) as a model, driven by hypothesis one file operation at a time.

Each simulated copy runs the protocol's steps as claims.py takes them, on an in-memory folder: link a claim, read
it, judge it stale on its own clock, take the takeover lock, read again, replace, beat (read, then write its own
heartbeat file), check-and-write a checkpoint, release under the lock. Between any two operations hypothesis may
run another copy, crash one (it never takes another step; its process is gone) or advance the clock. After every
step: no two copies write the run's checkpoint as owners at once, a claim is only ever taken from an owner whose
heartbeat stood still for its lease (or whose process is known gone), and a run whose owner died is taken within a
lease once a live copy keeps trying. The one assumption: a checkpoint's check and its write (a rename) are one step.
"""
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
import pytest

pytestmark = pytest.mark.slow  # real processes, or a long search

LEASE = 6.0
BEAT_EVERY = LEASE / 6


class Folder:
    """The run folder's files: name -> (record) for claims and locks, name -> beat counter for heartbeat files."""

    def __init__(self):
        self.files = {}

    def link(self, name: str, record) -> bool:
        if name in self.files:
            return False
        self.files[name] = record
        return True


class Copy:
    """One copy of the command; `steps` is its protocol as a generator that yields before each file operation."""

    def __init__(self, model: "Protocol", number: int, same_machine: bool):
        self.model, self.number, self.same_machine = model, number, same_machine
        self.claims = 0
        self.token = None
        self.crashed = False
        self.seen = {}  # what its watcher saw: file name -> (key, first time)
        self.steps = self.protocol()

    @property
    def files(self) -> dict:
        return self.model.folder.files

    def key(self, record: dict) -> tuple:
        return record["token"], self.files.get("beat." + record["token"])

    def stale(self, name: str, record: dict) -> bool:
        owner = self.model.copies[record["owner"]]
        if self.same_machine and owner.same_machine and owner.crashed:
            return True  # its process is gone, on this boot and pid namespace
        key, now = self.key(record), self.model.clock
        seen = self.seen.get(name)
        if seen is None or seen[0] != key:
            self.seen[name] = (key, now)
            return False
        return now - seen[1] >= LEASE

    def new_record(self) -> dict:
        self.claims += 1
        return {"token": f"copy{self.number}-{self.claims}", "owner": self.number}

    def take_lock(self):
        """The takeover lock (generator: yields before each operation); its result in self.locked."""
        self.locked = False
        lock = self.new_record()
        yield
        if self.model.folder.link("lock", lock):
            self.locked = lock
            return
        yield
        held = self.files.get("lock")
        if held is None or not self.stale("lock", held):
            return
        yield
        moved = self.files.pop("lock", None)  # renamed away: one rename wins
        yield
        if moved is not None and moved["token"] != held["token"]:
            self.model.folder.link("lock", moved)  # not the one judged stale: put back

    def release_lock(self):
        if self.files.get("lock") is self.locked:
            del self.files["lock"]

    def take(self):
        """A claim on the run (generator); the claim's record in self.token when this copy holds it."""
        record = self.new_record()
        yield
        self.files["beat." + record["token"]] = 0
        yield
        if self.model.folder.link("claim", record):
            self.token = record["token"]
            self.model.last_beat[self.token] = self.model.clock  # a new claim counts as a beat
            return
        self.files.pop("beat." + record["token"], None)
        yield
        current = self.files.get("claim")
        if current is None or not self.stale("claim", current):
            return
        judged = self.key(current)
        yield from self.take_lock()
        if not self.locked:
            return
        yield
        current = self.files.get("claim")
        if current is not None and self.key(current) == judged:
            self.model.taken_over(current, self)  # judged under the lock: the owner's silence so far counts
            self.files["beat." + record["token"]] = 0
            yield
            self.files["claim"] = record
            self.token = record["token"]
            self.model.last_beat[self.token] = self.model.clock
            yield
            self.files.pop("beat." + current["token"], None)
        yield
        self.release_lock()

    def holds(self) -> bool:
        return (self.files.get("claim") or {}).get("token") == self.token

    def protocol(self):
        while self.model.done < self.model.epochs:
            yield from self.take()
            if self.token is None:
                continue
            beats = 0
            while self.model.done < self.model.epochs:
                yield
                if not self.holds():  # the heartbeat thread finds the claim taken
                    break
                beats += 1
                yield
                self.files["beat." + self.token] = beats  # a file of its own: never another's claim
                self.model.last_beat[self.token] = self.model.clock
                yield
                if not self.holds():  # the guard before a checkpoint, then its rename: one step
                    break
                self.model.checkpoint_written(self)
            else:
                yield from self.take_lock()
                if self.locked:
                    yield
                    if self.holds():
                        del self.files["claim"]
                    yield
                    self.release_lock()
                self.files.pop("beat." + self.token, None)
            self.token = None


class Protocol(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.folder, self.clock, self.copies, self.epochs, self.done = Folder(), 0.0, [], 4, 0
        self.last_beat = {}  # claim token -> when its owner last beat
        self.violations = []

    @rule(same_machine=st.booleans())
    @precondition(lambda self: len(self.copies) < 3)
    def start_copy(self, same_machine):
        self.copies.append(Copy(self, len(self.copies), same_machine))

    @rule(index=st.integers(0, 2))
    def step(self, index):
        if index < len(self.copies) and not self.copies[index].crashed:
            next(self.copies[index].steps, None)

    @rule(index=st.integers(0, 2))
    def crash(self, index):
        if index < len(self.copies):
            self.copies[index].crashed = True

    @rule(seconds=st.sampled_from([BEAT_EVERY, LEASE / 2, LEASE]))
    def advance_clock(self, seconds):
        self.clock += seconds

    def taken_over(self, record: dict, taker: Copy) -> None:
        owner = self.copies[record["owner"]]
        known_gone = owner.crashed and owner.same_machine and taker.same_machine
        silent = self.clock - self.last_beat.get(record["token"], -LEASE)
        if not known_gone and silent < LEASE:
            self.violations.append(f"copy {taker.number} took copy {owner.number}'s claim {silent:.1f} s after its "
                                   "last beat")

    def checkpoint_written(self, writer: Copy) -> None:
        claim = self.folder.files.get("claim")
        if claim is None or claim["token"] != writer.token:
            self.violations.append(f"copy {writer.number} wrote a checkpoint without holding the claim")
        self.done += 1

    @invariant()
    def no_violation(self):
        assert not self.violations, self.violations
        assert self.done <= self.epochs

    def teardown(self):
        """Liveness: once the leases of crashed owners pass, live copies that keep stepping finish the run."""
        live = [copy for copy in self.copies if not copy.crashed]
        for _ in range(4):
            self.clock += LEASE
            for _ in range(40):
                for copy in live:
                    next(copy.steps, None)
        assert not self.violations, self.violations
        if live:
            assert self.done == self.epochs, f"live copies left the run at {self.done} of {self.epochs} epochs"


TestProtocol = Protocol.TestCase
TestProtocol.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
