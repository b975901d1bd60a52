"""Soak test of shared results folders: copies of one table's command on one results folder, disturbed at random
moments, must never lose a run or train one twice.

    python scripts/soak.py --minutes 30 --seed 1      # rounds until 30 minutes have passed
    python scripts/soak.py --rounds 3 --copies 4 --out /tmp/soak
    python scripts/soak.py --rounds 1 --short         # the suite's form: two runs a round, fewer faults

Each round trains a tiny table (four seeds; two with --short) or sweep (two arms, two seeds; one) on synthetic MNIST
with several copies at once (tests/patched_main.py with PATCH=epochs,windows: every epoch begun and finished is
recorded, and the moments where a crash hurts most last longer; each process a fork of the soak's own, which has
imported what a run imports, as tests/forked.py starts them) and injects, at moments drawn from the round's seed:
SIGKILL and SIGTERM of a copy, SIGKILL inside a claim's link, a takeover, a release or a run folder's write, copies
started late or with other leases, `--resume RUN --epochs 2` of a claimed run, `--force` while claims are live (in a
quarter of the rounds), a claim file overwritten with garbage, a checkpoint cut short (while the soak holds the
run's claim, as no copy trains it then), and `main.py status` every second (every 3 s with --short). Once every
copy has ended it runs the command once more undisturbed, as a user repeats it (and with --retry-failed when a cut
checkpoint failed its run), then checks:

- every run finished; a run recorded failed only where the soak cut its checkpoint, saying so (--retry-failed
  then trains it);
- no epoch finished twice, and none began again that metrics.csv already held (a --force that cleared the folders
  starts the count afresh);
- each run's final weights (bit for bit) and metrics.csv (all but its times) equal those of the same table trained
  once undisturbed, and so do results.csv and runs.csv (all but `seconds`);
- status always exits 0; no process printed a traceback, an unexpected error, "not a results folder" or "not a
  run folder", or a refusal that no fault explains; each process exited as its faults explain.

The seed comes first in the output and each violation names its round's seed: --seed SEED --rounds 1 replays that
round's faults (where they land against the copies is up to the machine). SOAK_DEFECT=unguarded puts a defect in
every copy (claims taken whoever holds them), which the soak must catch. Exit status 1 on any violation.
"""
import argparse
import collections
import csv
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import forked  # noqa: E402
from conftest import make_mnist  # noqa: E402
from runner import claims  # noqa: E402
from runner.records import CHECKPOINT, CLAIM, CONFIG, FAILED, METRICS  # noqa: E402

PATCHED = str(ROOT / "tests" / "patched_main.py")
EPOCHS = 2
LEASE = 2
OTHER_LEASES = (1, 4)


@dataclasses.dataclass(frozen=True)
class Form:
    """How much a round does: its tables, its faults (how many, drawn within how many seconds of the table's
    placing), how late its late copy starts at most and how often it calls `status`."""
    tables: dict
    faults: tuple[int, int]
    fault_seconds: float
    late_within: float
    status_every: float


FULL = Form(tables={"table": ["1", "--seeds", "0-3", "--epochs", str(EPOCHS), "--batch-size", "50"],
                    "sweep": ["1", "--set", "lr=0.05,0.1", "--seeds", "0,1", "--epochs", str(EPOCHS),
                              "--batch-size", "50"]},
            faults=(3, 7), fault_seconds=12, late_within=8, status_every=1)
# the suite's form: two runs a round, fewer faults sooner, `status` less often
SHORT = Form(tables={"table": ["1", "--seeds", "0,1", "--epochs", str(EPOCHS), "--batch-size", "50"],
                     "sweep": ["1", "--set", "lr=0.05,0.1", "--seeds", "0", "--epochs", str(EPOCHS),
                               "--batch-size", "50"]},
             faults=(2, 4), fault_seconds=4, late_within=3, status_every=3)
ROUND_LIMIT = 400  # seconds a round's copies (and then the repeated command) may take before they count as hung: a
# round takes about 50 s on an idle 2-core machine and three times that beside a test suite
TIMES = ("seconds", "test_seconds")  # the columns that differ between equal runs
FORBIDDEN = ("Traceback", "unexpected", "is not a results folder", "not a run folder")
TRAINERS = ("copy", "late copy", "force", "resume")
FAULTS = ("SIGKILL", "SIGKILL in a window", "SIGTERM", "resume", "damaged claim", "cut checkpoint")
# error lines a process may print, by what explains them
REFUSALS = {"SIGTERM": ("interrupted",), "force": ("--force:",),
            "resume": ("is being trained by", "already finished", "stopped before its first epoch finished"),
            "cut checkpoint": ("lack runs", "is damaged"),
            "force cleared": ("lack runs",)}  # a copy that ended while --force cleared the runs it had counted


class Round:
    """One round: its copies, the faults it injected and the violations found."""

    def __init__(self, seed: int, work: Path, data: Path, copies: int, form: Form):
        self.seed, self.data, self.copies, self.form = seed, data, copies, form
        self.rng = random.Random(seed)
        self.kind = self.rng.choice(sorted(form.tables))
        self.force = self.rng.random() < 0.25
        self.step_delay, self.window_delay = self.rng.uniform(0.05, 0.25), self.rng.uniform(0.05, 0.3)
        folder = work / f"round-{seed}"
        self.out, self.probe, self.logs = folder / "results", folder / "probe", folder / "logs"
        self.probe.mkdir(parents=True)
        self.logs.mkdir()
        self.processes = []  # (role, Popen, log path without suffix)
        self.signals = collections.defaultdict(set)  # pid -> signals sent
        self.faults = collections.Counter()
        self.damaged = set()  # run folders whose checkpoint the soak cut
        self.violations = []

    def command(self, lease: float = LEASE, *more) -> list:
        return [*self.form.tables[self.kind], "--data-dir", str(self.data), "--out", str(self.out), "--threads", "1",
                "--device", "cpu", "--quiet", "--lease", str(lease), *more]

    def start(self, role: str, argv: list, patch: str = "epochs,windows", probe: Path | None = None,
              step_delay: float | None = None) -> forked.Forked:
        log = self.logs / f"{len(self.processes):02d}-{role.replace(' ', '-')}"
        defect = os.environ.get("SOAK_DEFECT")
        environment = dict(os.environ, PATCH=patch + (f",{defect}" if defect else ""),
                           PROBE_DIR=str(probe or self.probe), PYTHONUNBUFFERED="1",
                           STEP_DELAY=str(self.step_delay if step_delay is None else step_delay),
                           WINDOW_DELAY=str(self.window_delay))
        program = [sys.executable, PATCHED] if patch else [sys.executable, str(ROOT / "main.py")]
        with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
            process = forked.start([*program, *argv], env=environment, stdout=out, stderr=err)
        self.processes.append((role, process, log))
        return process

    def live_trainers(self) -> list:
        return [process for role, process, _ in self.processes if role in TRAINERS and process.poll() is None]

    def run_folders(self) -> list:
        return sorted(path for path in self.out.glob("*") if path.is_dir()) if self.out.is_dir() else []

    def schedule(self) -> tuple[list, list]:
        """(seconds after the round's start, copy) and (seconds after the table was placed, fault), drawn from the
        round's seed: faults count from the first config.json, as copies take seconds to start."""
        starts = [(0.0, False)] * self.copies + [(self.rng.uniform(1, self.form.late_within), True)]  # (when, late)
        seconds = self.form.fault_seconds
        faults = [(self.rng.uniform(0, seconds), self.rng.choice(FAULTS))
                  for _ in range(self.rng.randint(*self.form.faults))]
        if self.force:
            faults.append((self.rng.uniform(0, seconds / 2), "force"))
        return starts, sorted(faults)

    def placed(self) -> bool:
        return any((folder / CONFIG).exists() for folder in self.run_folders())

    def run(self) -> None:
        """Start the copies and inject the faults as scheduled (a fault that finds nothing to act on is tried
        again while copies run), with `status` every few seconds (the form's) once the table is placed; until every
        copy ended (the faults left then are dropped)."""
        starts, faults = self.schedule()
        started, placed, last_status = time.monotonic(), None, 0.0
        while starts or self.live_trainers():
            now = time.monotonic() - started
            if starts and starts[0][0] <= now:
                self.start_copy(late=starts.pop(0)[1])
            if placed is None and self.placed():
                placed = now
            if placed is not None and faults and faults[0][0] <= now - placed:
                _, fault = faults.pop(0)
                if not self.inject(fault) and self.live_trainers():
                    faults.append((now - placed + 0.5, fault))
                    faults.sort()
            if placed is not None and now - last_status >= self.form.status_every:
                self.start("status", ["status", str(self.out)], patch="")
                last_status = now
            if now > ROUND_LIMIT:
                for process in self.live_trainers():
                    self.violations.append(f"a copy (pid {process.pid}) ran past {ROUND_LIMIT} s")
                    self.send(process, signal.SIGKILL)
                    process.wait()
            time.sleep(0.05)
        for _, process, _ in self.processes:
            process.wait()

    def inject(self, fault: str) -> bool:
        """Inject one fault now; False when there is nothing for it to act on yet."""
        injected = {"force": self.start_force,
                    "SIGKILL": lambda: self.signal_a_copy(signal.SIGKILL),
                    "SIGTERM": lambda: self.signal_a_copy(signal.SIGTERM), "SIGKILL in a window": self.kill_in_window,
                    "resume": self.resume_a_claimed_run, "damaged claim": self.damage_a_claim,
                    "cut checkpoint": self.cut_a_checkpoint}[fault]()
        if injected:
            self.faults[injected if isinstance(injected, str) else fault] += 1
        return bool(injected)

    def start_copy(self, late: bool) -> None:
        lease = self.rng.choice((LEASE, LEASE, *OTHER_LEASES))
        self.start("late copy" if late else "copy", self.command(lease))
        if lease != LEASE or late:
            self.faults[f"copy with lease {lease} s" if lease != LEASE else "copy started late"] += 1

    def start_force(self) -> bool:
        self.start("force", self.command(LEASE, "--force"), patch="epochs,windows,cleared")
        return True

    def send(self, process: forked.Forked, signum: int) -> None:
        self.signals[process.pid].add(signum)
        process.send_signal(signum)

    def signal_a_copy(self, signum: int) -> bool:
        live = self.live_trainers()
        if not live:
            return False
        self.send(self.rng.choice(live), signum)
        if self.rng.random() < 0.5:
            self.start_copy(late=True)  # and, often, another copy takes its place
        return True

    def kill_in_window(self) -> str | None:
        """SIGKILL a copy while it is inside one of the windows the probe widens (waiting up to 3 s for one)."""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for process in self.live_trainers():
                try:
                    window = (self.probe / f"window-{process.pid}").read_text()
                except FileNotFoundError:
                    continue
                self.send(process, signal.SIGKILL)
                return f"SIGKILL in: {window or '?'}"
            time.sleep(0.01)
        return None

    def claimed_folders(self) -> list:
        return [folder for folder in self.run_folders() if (folder / CLAIM).exists() and (folder / CONFIG).exists()]

    def resume_a_claimed_run(self) -> bool:
        claimed = self.claimed_folders()
        if claimed:
            self.start("resume", ["--resume", str(self.rng.choice(claimed)), "--epochs", str(EPOCHS), "--threads", "1",
                                  "--device", "cpu", "--quiet"])
        return bool(claimed)

    def damage_a_claim(self) -> bool:
        claimed = self.claimed_folders()
        if claimed:
            (self.rng.choice(claimed) / CLAIM).write_bytes(b"\0damaged\n")
        return bool(claimed)

    def cut_a_checkpoint(self) -> bool:
        """Cut short the checkpoint of an unfinished run no copy trains now (the soak holds its claim meanwhile)."""
        watcher = claims.Watcher(LEASE)
        for folder in self.run_folders():
            if not unfinished_with_checkpoint(folder):
                continue
            claim = watcher.take(folder)
            if claim is None:
                continue
            try:
                if unfinished_with_checkpoint(folder):
                    whole = (folder / CHECKPOINT).read_bytes()
                    (folder / CHECKPOINT).write_bytes(whole[:len(whole) // 2])
                    self.damaged.add(folder.name)
                    return True
            finally:
                claim.release()
        return False

    def finish(self) -> None:
        """The command once more, undisturbed; then, where it left runs failed, with --retry-failed."""
        self.wait_for(self.start("repeat", self.command(), step_delay=0))
        failed = {folder.name: read(folder / FAILED) for folder in self.run_folders() if (folder / FAILED).exists()}
        for name, why in failed.items():
            if name not in self.damaged or "damaged" not in why:
                self.violations.append(f"{name} failed with no fault to explain it: {why.strip()}")
        if failed:
            retry_probe = self.probe.parent / "retry-probe"
            retry_probe.mkdir()
            self.wait_for(self.start("retry", self.command(LEASE, "--retry-failed"), probe=retry_probe, step_delay=0))
            self.check_epochs_once(retry_probe)

    def wait_for(self, process: forked.Forked) -> None:
        try:
            process.wait(ROUND_LIMIT)
        except subprocess.TimeoutExpired:
            self.violations.append(f"the undisturbed command (pid {process.pid}) ran past {ROUND_LIMIT} s")
            self.send(process, signal.SIGKILL)
            process.wait()

    def explained(self, role: str, pid: int) -> set:
        """What may explain a process's errors and exit status: its role, the signals it got, the round's faults."""
        causes = {role} | {signal.Signals(signum).name for signum in self.signals[pid]}
        causes |= {"force cleared"} if any(self.probe.glob("cleared-*")) else set()
        return causes | ({"cut checkpoint"} if self.damaged else set())

    def check_processes(self) -> None:
        for role, process, log in self.processes:
            err, code = log.with_suffix(".err").read_text(), process.returncode
            name = f"{role} (pid {process.pid}, {log.name})"
            if role == "status":
                if code != 0 or err:
                    self.violations.append(f"{name} exited {code}: {err.strip()[:300]}")
                continue
            for phrase in FORBIDDEN:
                if phrase in err:
                    self.violations.append(f"{name} printed {phrase!r}: {err.strip()[-300:]}")
            causes = self.explained(role, process.pid)
            allowed = [words for cause in causes for words in REFUSALS.get(cause, ())]
            for line in err.splitlines():
                if line.startswith("error:") and not any(words in line for words in (*allowed, *FORBIDDEN)):
                    self.violations.append(f"{name}: {line}")
            codes = {"repeat": {0, 1} if self.damaged else {0}, "retry": {0}}.get(role, {0, 1, 3})
            codes |= {143, -signal.SIGTERM} if "SIGTERM" in causes else set()
            codes |= {-signal.SIGKILL} if "SIGKILL" in causes else set()
            if code not in codes or code == 1 and "error:" not in err:
                self.violations.append(f"{name} exited {code}: {err.strip()[-300:]}")
            cleared = self.probe / f"cleared-{process.pid}"
            if role == "force" and "error: --force:" in err and cleared.exists():
                self.violations.append(f"{name} refused, yet it had cleared run folders")

    def check_epochs(self) -> None:
        """No epoch finished twice (before and after a --force that cleared the folders, each), and none began
        that metrics.csv held already."""
        snapshots = list(self.probe.glob("cleared-*"))  # lines of each file before the clearing
        cleared = json.loads(snapshots[0].read_text()) if snapshots else None
        before, after = collections.Counter(), collections.Counter()
        for path in self.probe.glob("epochs-*"):
            lines = path.read_text().splitlines()
            split = len(lines) if cleared is None else cleared.get(path.name, 0)
            before.update(tuple(line.split()) for line in lines[:split])
            after.update(tuple(line.split()) for line in lines[split:])
        for counted in (before, after):
            self.flag_repeated(counted)
        self.check_begun(self.probe)

    def check_epochs_once(self, probe: Path) -> None:
        self.flag_repeated(collections.Counter(tuple(line.split()) for path in probe.glob("epochs-*")
                                               for line in path.read_text().splitlines()))
        self.check_begun(probe)

    def flag_repeated(self, counted: collections.Counter) -> None:
        for (name, epoch), times in sorted(counted.items()):
            if times > 1:
                self.violations.append(f"{name} epoch {epoch} was trained to its end {times} times")

    def check_begun(self, probe: Path) -> None:
        for path in probe.glob("begun-*"):
            for line in path.read_text().splitlines():
                name, epoch, recorded = line.split()
                if int(epoch) <= int(recorded):
                    self.violations.append(f"{name} epoch {epoch} began again while its metrics.csv held {recorded} "
                                           f"epochs ({path.name})")

    def check_results(self, reference: Path) -> list:
        """Every run finished with the reference's weights and metrics; the tables equal the reference's. Returns
        the run folders' names."""
        expected = sorted(path.name for path in reference.iterdir() if (path / CONFIG).exists())
        found = [folder.name for folder in self.run_folders()]
        if found != expected:
            self.violations.append(f"run folders {found}, expected {expected}")
        for name in expected:
            folder = self.out / name
            if (folder / FAILED).exists() or not (folder / CHECKPOINT).exists():
                self.violations.append(f"{name} did not finish: {read(folder / FAILED) or 'no checkpoint'}")
                continue
            try:
                same = same_weights(folder / CHECKPOINT, reference / name / CHECKPOINT)
            except Exception as error:  # a finished run's checkpoint left damaged is a violation, not the soak's end
                self.violations.append(f"{name}: its checkpoint cannot be read ({type(error).__name__})")
                continue
            if not same:
                self.violations.append(f"{name}: its final weights differ from the undisturbed run's")
            if table(folder / METRICS, TIMES) != table(reference / name / METRICS, TIMES):
                self.violations.append(f"{name}: its metrics.csv differs from the undisturbed run's")
        for file in ("results.csv", "runs.csv"):
            if table(self.out / file, ("seconds",)) != table(reference / file, ("seconds",)):
                self.violations.append(f"{file} differs from the undisturbed table's")
        return expected


def unfinished_with_checkpoint(folder: Path) -> bool:
    recorded = len(read(folder / METRICS).splitlines()) - 1
    return (folder / CHECKPOINT).exists() and not (folder / FAILED).exists() and recorded < EPOCHS


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def table(path: Path, ignored: tuple) -> list:
    """A CSV file's rows without the ignored columns (None when it is missing)."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return [{key: value for key, value in row.items() if key not in ignored} for row in csv.DictReader(f)]


def same_weights(path: Path, reference: Path) -> bool:
    import torch

    ours = torch.load(path, map_location="cpu", weights_only=True)["model"]
    theirs = torch.load(reference, map_location="cpu", weights_only=True)["model"]
    return ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


def start_reference(form: Form, kind: str, work: Path, data: Path) -> forked.Forked:
    """The table trained once, undisturbed, by one process of its own, beside the round's copies."""
    out = work / f"reference-{kind}"
    return forked.start([sys.executable, str(ROOT / "main.py"), *form.tables[kind], "--data-dir", str(data), "--out",
                         str(out), "--threads", "1", "--device", "cpu", "--quiet"])


def reference_folder(process: forked.Forked) -> Path:
    """The reference's results folder, once it has trained (the first round of its kind waits for it)."""
    if process.returncode is None:
        _, err = process.communicate()
        if process.returncode != 0:
            sys.exit(f"error: the undisturbed table failed: {err.strip()}")
    return Path(process.args[process.args.index("--out") + 1])


def play_round(seed: int, work: Path, data: Path, copies: int, form: Form, references: dict) -> tuple[Round, list]:
    """A round played and checked; with the names of its runs. references: kind -> the process training it."""
    round_ = Round(seed, work, data, copies, form)
    if round_.kind not in references:
        references[round_.kind] = start_reference(form, round_.kind, work, data)
    round_.run()
    round_.finish()
    round_.check_processes()
    round_.check_epochs()
    return round_, round_.check_results(reference_folder(references[round_.kind]))


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from running it, so that the manual's commands can be checked against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--minutes", type=float, help="play rounds until this many minutes have passed")
    length.add_argument("--rounds", type=int, help="play this many rounds")
    parser.add_argument("--seed", type=int, help="the first round's seed (the next rounds': +1 each); default: random")
    parser.add_argument("--copies", type=int, default=3, help="copies started at once in each round, one more "
                        "comes late (default 3)")
    parser.add_argument("--short", action="store_true", help="the suite's short form: two runs a round, two to "
                        "four faults within 4 s, `status` every 3 s")
    parser.add_argument("--out", type=Path, help="where the rounds' folders go (default: a new temporary folder)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    seed = random.randrange(10 ** 6) if args.seed is None else args.seed
    work = args.out or Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: seed {seed}, {args.copies} copies a round, folders in {work}", flush=True)
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    data = make_mnist(work / "data")
    forked.import_what_runs_import()
    deadline = time.monotonic() + 60 * (args.minutes or 0)
    references, faults, violations, runs, played = {}, collections.Counter(), [], 0, 0
    while played < args.rounds if args.rounds else time.monotonic() < deadline:
        started = time.monotonic()
        round_, names = play_round(seed + played, work, data, args.copies, SHORT if args.short else FULL, references)
        played, runs = played + 1, runs + len(names)
        faults.update(round_.faults)
        violations += [(round_.seed, violation) for violation in round_.violations]
        print(f"round {played} (seed {round_.seed}, {round_.kind}{', --force' if round_.force else ''}): "
              f"{sum(round_.faults.values())} faults, {len(round_.violations)} violations, "
              f"{time.monotonic() - started:.0f} s", flush=True)
    print(f"rounds: {played}\nruns: {runs}\nfaults injected: {sum(faults.values())}")
    for fault, count in sorted(faults.items()):
        print(f"  {fault}: {count}")
    print(f"violations: {len(violations)}")
    for round_seed, violation in violations:
        print(f"  round seed {round_seed} (replay: --seed {round_seed} --rounds 1): {violation}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
