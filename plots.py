"""Pictures of runs: learning curves, the results table's curves and confusion matrices (PNG, no display).
Each function renders into a file object, which the run folder's writer then puts in place."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(metrics: list, reference_test_acc: float | None, f, title: str) -> None:
    """Loss and accuracy by epoch, train against test: the gap between them is the ladder's story."""
    epochs = [row["epoch"] for row in metrics]
    tested = [row for row in metrics if row["test_acc"] is not None]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in metrics], label="train")
    loss_axis.plot([row["epoch"] for row in tested], [row["test_loss"] for row in tested], "o-", label="test")
    acc_axis.plot(epochs, [row["train_acc"] for row in metrics], label="train")
    acc_axis.plot([row["epoch"] for row in tested], [row["test_acc"] for row in tested], "o-", label="test")
    if reference_test_acc is not None:
        acc_axis.axhline(reference_test_acc, linestyle="--", color="gray", label="reference test acc")
    for axis, name in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def plot_results(curves: dict, f) -> None:
    """Test accuracy by epoch for every version, one panel per dataset. curves: dataset -> {label: (x, y)}."""
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for axis, (dataset, lines) in zip(axes[0], curves.items()):
        for label, (epochs, accuracy) in lines.items():
            axis.plot(epochs, accuracy, marker=".", label=label)
        axis.set_title(dataset)
        axis.set_xlabel("epoch")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def plot_confusion(confusion, classes: list, f, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(confusion.numpy(), cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for row in range(len(classes)):
        for column in range(len(classes)):
            value = int(confusion[row, column])
            axis.text(column, row, value, ha="center", va="center", fontsize=7,
                      color="white" if value > confusion.max() / 2 else "black")
    figure.colorbar(image)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(f, format="png", dpi=100)
    plt.close(figure)
