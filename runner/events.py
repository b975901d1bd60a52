"""TensorBoard event files of a run, in its run folder: `tensorboard --logdir runs` shows every run (a table's
runs side by side under its results folder).

All points share one x-axis, the global step. The writer starts after the first training step, so it adds nothing
to start-up, and with `purge_step` at the step the checkpoint holds: whatever a crashed session logged after that
is hidden when the run continues, so every epoch appears once. Event files are the one thing in a run folder that
is appended to rather than replaced. Only the writing process logs.
"""
import time

from runner.records import HPARAMS_RUN


class RunLog:
    def __init__(self, folder, first_step: int, split: str = "test"):
        """folder: the RunFolder; first_step: the global step this session starts from; split: what the epochs are
        tested on (test, or val under --holdout), which names their points."""
        self.folder, self.first_step, self.split = folder, first_step, split
        self.writer = None
        # Seconds spent: starting the writer (once), logging the epochs' points, and the end-of-run figures.
        self.seconds = {"start": 0.0, "points": 0.0, "finish": 0.0}

    def _timed(self, kind: str, log) -> None:
        if not self.folder.writer:
            return
        started = time.perf_counter()
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder.path), purge_step=self.first_step + 1)
            self.seconds["start"] += time.perf_counter() - started
            started = time.perf_counter()
        log(self.writer)
        self.seconds[kind] += time.perf_counter() - started

    def running_loss(self, step: int, loss: float) -> None:
        self._timed("points", lambda writer: writer.add_scalar("train/running_loss", loss, step))

    def epoch(self, step: int, row: dict, images: int) -> None:
        """An epoch's row of metrics.csv (and its throughput), at the epoch's last step."""

        def log(writer):
            writer.add_scalar("train/loss", row["train_loss"], step)
            writer.add_scalar("train/accuracy", row["train_acc"], step)
            split = self.split
            if row[f"{split}_acc"] is not None:
                writer.add_scalar(f"{split}/loss", row[f"{split}_loss"], step)
                writer.add_scalar(f"{split}/accuracy", row[f"{split}_acc"], step)
            if f"final_{split}_acc" in row:
                writer.add_scalar(f"{split}/final_loss", row[f"final_{split}_loss"], step)
                writer.add_scalar(f"{split}/final_accuracy", row[f"final_{split}_acc"], step)
            writer.add_scalar("lr", row["lr"], step)
            writer.add_scalar("time/epoch_seconds", row["seconds"], step)
            writer.add_scalar("time/images_per_second", images / row["seconds"], step)
            writer.flush()

        self._timed("points", log)

    def finish(self, step: int, hparams: dict, final: dict, confusion_figure, mistakes_figure) -> None:
        """At the end of a run: the recipe as hyperparameters with the final accuracies (HParams view), the
        confusion matrix and the misclassified test images."""

        def log(writer):
            writer.add_hparams(hparams, final, run_name=HPARAMS_RUN, global_step=step)
            writer.add_figure(f"{self.split}/confusion_matrix", confusion_figure, step)
            if mistakes_figure is not None:
                writer.add_figure(f"{self.split}/mistakes", mistakes_figure, step)

        self._timed("finish", log)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def hyperparameters(run) -> dict:
    """The recipe and identity as TensorBoard takes hyperparameters: numbers, strings and booleans."""
    from dataclasses import asdict

    values = {"version": run.version, "dataset": run.dataset, **asdict(run.recipe), "seed": run.identity.seed,
              "loader": run.identity.loader, "amp": run.identity.amp, "holdout": run.identity.holdout}
    return {name: value if isinstance(value, (int, float, str, bool)) else str(value)
            for name, value in values.items()}

