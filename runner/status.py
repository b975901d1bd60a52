"""`main.py status RESULTS_DIR`: what the copies of a table's command have done so far, read from the results
folder alone (run folders, their claims and failures), without torch, so it answers at once."""
import json
from pathlib import Path

from runner.claims import owner_gone, owner_text, read_claim
from runner.errors import RunnerError
from runner.records import CONFIG, SLURM_LOGS, RunFolder


def run_status(folder: RunFolder) -> tuple[str, str]:
    """(state, what a person reads of it): finished, failed, running or waiting."""
    epochs = json.loads((folder / CONFIG).read_text()).get("epochs", 0)
    progress = f"{folder.epochs_recorded()}/{epochs} epochs"
    failure = folder.failure()
    if failure:
        return "failed", f"{progress}  {failure}"
    if folder.has_ended(epochs):
        return "finished", progress
    record = read_claim(folder.path)
    if record is not None:
        gone = "; its process is gone: the next copy on this machine takes the run over at once" \
            if owner_gone(record) else ""
        return "running", f"{progress}  on {owner_text(record)}{gone}"
    return "waiting", progress


def status_lines(results_dir: Path) -> list:
    if not results_dir.is_dir():
        raise RunnerError(f"{results_dir} does not exist: give the results folder of a table, sweep or ablation")
    folders = [RunFolder(entry) for entry in sorted(results_dir.iterdir()) if entry.is_dir()
               and RunFolder(entry).is_ours()]
    if not folders:
        raise RunnerError(f"{results_dir} holds no runs of this tool: give the results folder of a table, sweep or "
                          "ablation")
    states = [(folder.path.name, *run_status(folder)) for folder in folders]
    width = max(len(name) for name, _, _ in states)
    lines = [f"Results folder: {results_dir}"]
    lines += [f"  {state:<8}  {name.ljust(width)}  {detail}" for name, state, detail in states]
    counts = {state: sum(1 for _, other, _ in states if other == state)
              for state in ("finished", "running", "failed", "waiting")}
    lines.append(f"{len(states)} runs: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    if (results_dir / SLURM_LOGS).is_dir():
        lines.append(f"Slurm tasks' logs: {results_dir / SLURM_LOGS}")
    return lines
