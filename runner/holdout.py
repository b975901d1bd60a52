"""The validation split of --holdout: N training images set aside, stratified by class, for choosing a recipe
without ever looking at the test split.

Each class gives its share of N (by largest remainder, so the shares add up to N exactly), and within a class the
images given are those whose index hashes lowest under the holdout seed. A hash, not a random generator, so the
same N and seed hold out the same images in every arm, every training seed, every process and every release of
torch or numpy. No torch here: the command line checks a --holdout before anything heavy is imported.
"""
import hashlib


class HoldoutError(ValueError):
    """A --holdout that a class cannot give; its message names the class and what to do."""


def shares(class_counts: list, count: int, classes: list | None = None) -> list:
    """How many images each class gives: count split in proportion to the class sizes, summing to count exactly.
    Every class that has images keeps at least one to train on."""
    total = sum(class_counts)
    exact = [divmod(count * size, total) for size in class_counts]
    taken = [whole for whole, _ in exact]
    by_remainder = sorted(range(len(class_counts)), key=lambda index: (-exact[index][1], index))
    for index in by_remainder[:count - sum(taken)]:
        taken[index] += 1
    for index, (given, size) in enumerate(zip(taken, class_counts)):
        if size and given >= size:
            name = classes[index] if classes else index
            raise HoldoutError(f"--holdout {count}: class {name} has {size:,} training images and would give "
                               f"{given:,}, leaving none to train on; hold out fewer (the training split has "
                               f"{total:,} images)")
    return taken


def _rank(seed: int, index: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()


def held_out(labels: list, count: int, seed: int, classes: list | None = None) -> list:
    """The indices (ascending) of the training images held out: in each class, its share of the images that hash
    lowest under the seed."""
    members = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    order = sorted(members)
    taken = shares([len(members[label]) for label in order], count,
                   [classes[label] for label in order] if classes else None)
    chosen = []
    for label, given in zip(order, taken):
        chosen += sorted(members[label], key=lambda index: _rank(seed, index))[:given]
    return sorted(chosen)
