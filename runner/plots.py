"""Pictures of runs: learning curves, the results table's curves, confusion matrices and the most confident
mistakes. Each function returns a matplotlib figure: `save` renders one as PNG into a file object (which the run
folder's writer puts in place), and TensorBoard takes the same figures."""
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(figure, f) -> None:
    figure.tight_layout()
    figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


SPLIT_NAMES = {"test": "test", "val": "validation (held out)"}
LABEL_WIDTH, LABEL_ROOM = 40, 100


def fitted_label(label: str) -> str:
    """A row's label as a legend or an axis shows it: wrapped at LABEL_WIDTH characters, and past LABEL_ROOM its
    middle left out, so that labels differing at either end stay apart. A sweep's arm can be named in over 150
    characters, which on one line left a plot no room, and matplotlib drew it without laying it out."""
    if len(label) > LABEL_ROOM:
        head = (LABEL_ROOM - 1) // 2
        label = label[:head] + "…" + label[len(label) - (LABEL_ROOM - 1 - head):]
    return "\n".join(textwrap.wrap(label, LABEL_WIDTH))


def curves_figure(metrics: list, reference_test_acc: float | None, title: str, split: str = "test"):
    """Loss and accuracy by epoch, train against test (or validation: split "val"): the gap between them is the
    ladder's story."""
    epochs = [row["epoch"] for row in metrics]
    tested = [row for row in metrics if row.get(f"{split}_acc") is not None]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in metrics], label="train")
    loss_axis.plot([row["epoch"] for row in tested], [row[f"{split}_loss"] for row in tested], "o-",
                   label=SPLIT_NAMES[split])
    acc_axis.plot(epochs, [row["train_acc"] for row in metrics], label="train")
    acc_axis.plot([row["epoch"] for row in tested], [row[f"{split}_acc"] for row in tested], "o-",
                  label=SPLIT_NAMES[split])
    if reference_test_acc is not None:
        acc_axis.axhline(reference_test_acc, linestyle="--", color="gray", label="reference test acc")
    for axis, name in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return figure


def results_figure(curves: dict, split: str = "test"):
    """Test (or validation: split "val") accuracy by epoch for every row, one panel per dataset. curves: dataset ->
    {label: (x, y)}."""
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for axis, (dataset, lines) in zip(axes[0], curves.items()):
        for label, (epochs, accuracy) in lines.items():
            axis.plot(epochs, accuracy, marker=".", label=fitted_label(label))
        axis.set_title(dataset)
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"{SPLIT_NAMES[split]} accuracy")
        axis.grid(alpha=0.3)
        axis.legend()
    return figure


def frontier_figure(lines: dict):
    """Accuracy against seconds, a line per recipe through its budgets, each point its mean over seeds with its 95%
    interval and labelled with its epochs. lines: name -> [(seconds, accuracy, low, high, epochs)]."""
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, found in lines.items():
        seconds, accuracy = [point[0] for point in found], [point[1] for point in found]
        errors = [[point[1] - point[2] if point[2] is not None else 0 for point in found],
                  [point[3] - point[1] if point[3] is not None else 0 for point in found]]
        axis.errorbar(seconds, accuracy, yerr=errors, marker="o", capsize=3, label=name)
        for x, y, *_, epochs in found:
            axis.annotate(f"{epochs}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("seconds of the whole run (training, its tests, the final test)")
    axis.set_ylabel("test accuracy (mean, 95% interval)")
    axis.set_title("Time and accuracy: each point a number of epochs")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def differences_figure(comparisons: list):
    """One bar per comparison: the difference of mean accuracy with its 95% interval (paired by seed), zero marked.
    comparisons: [(label, difference, low, high)]."""
    labels = [fitted_label(label) for label, _, _, _ in comparisons]
    longest = max(len(line) for label in labels for line in label.splitlines())  # room beside a plot 5 inches wide
    tallest = max(label.count("\n") + 1 for label in labels)
    figure, axis = plt.subplots(figsize=(5 + 0.1 * longest, max(0.5, 0.2 * tallest) * len(comparisons) + 1.5))
    positions = range(len(comparisons))
    differences = [difference for _, difference, _, _ in comparisons]
    errors = [[difference - low for _, difference, low, _ in comparisons],
              [high - difference for _, difference, _, high in comparisons]]
    axis.barh(positions, differences, xerr=errors, capsize=4, color="tab:blue", alpha=0.7)
    axis.axvline(0, color="black", linewidth=1)
    axis.set_yticks(list(positions), labels)
    axis.invert_yaxis()
    axis.set_xlabel("difference of mean accuracy\n(95% interval, paired by seed)")
    axis.grid(axis="x", alpha=0.3)
    return figure


def confusion_figure(confusion, classes: list, title: str):
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
    return figure


def select_mistakes(outputs, labels, limit: int = 64) -> list:
    """[(index, predicted class, probability)] of the wrongly classified images, the most confident first.
    outputs: log-probabilities (N, classes); labels: (N,)."""
    probabilities, predicted = outputs.exp().max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[probabilities[wrong].argsort(descending=True, stable=True)][:limit]
    return [(int(i), int(predicted[i]), float(probabilities[i])) for i in order]


def mistakes_figure(images, labels, mistakes: list, classes: list, title: str):
    """A grid of mistaken test images (uint8 (N, C, H, W)), each captioned with its true and predicted class and the
    probability the model gave the prediction. One canvas in one axes: 64 small axes would take seconds to draw,
    at the end of every run. The title is the axes' own, which the layout keeps clear of the canvas: a figure's
    title sits a fixed fraction of its height down, into the first row on a grid of eight rows."""
    import numpy as np

    columns, size = 8, images.shape[-1]
    rows = max(1, -(-len(mistakes) // columns))
    caption = size // 2  # room under each image for its two lines
    height, width = size + caption, size + 2
    canvas = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    figure, axis = plt.subplots(figsize=(2 * columns, 2.3 * rows))
    for place, (index, predicted, probability) in enumerate(mistakes):
        row, column = divmod(place, columns)
        top, left = row * height, column * width + 1
        canvas[top:top + size, left:left + size] = images[index].permute(1, 2, 0).numpy()  # grey fills all three
        axis.text(left + size / 2, top + size + 1, f"{classes[int(labels[index])]}\n-> {classes[predicted]} "
                  f"{probability:.2f}", ha="center", va="top", fontsize=8)
    axis.imshow(canvas, interpolation="nearest")
    axis.axis("off")
    axis.set_title(title)
    return figure
