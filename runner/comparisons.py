"""The statistics of a table over seeds: each row's mean with its 95% interval (t distribution), and each comparison
of two rows as the difference of their means with its 95% interval paired by seed, the paired t-test's p-value and
Holm's correction over the table's comparisons. scipy.special gives the t distribution (scipy.stats would too, in
three times the import time a table's process pays); it is imported here alone, when a table has something to
compare."""
import math
import statistics

from scipy.special import stdtr, stdtrit

LEVEL = 0.95
ALPHA = 1 - LEVEL
SAME = 1e-12  # a spread of the differences below this is rounding (accuracies differ in steps of 1e-4 or more)
POWER_Z = 7.85  # (z_0.975 + z_0.80)^2: seeds for the paired test at 5% to find a difference with 80% power


def interval_of_mean(values: list) -> tuple[float, float] | None:
    """The 95% interval of the mean of `values` (t distribution), or None with fewer than two."""
    if len(values) < 2:
        return None
    mean, error = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    if error < SAME:
        return mean, mean
    half = stdtrit(len(values) - 1, 1 - ALPHA / 2) * error
    return mean - half, mean + half


def paired_difference(ours: dict, theirs: dict) -> dict | None:
    """ours - theirs over the seeds both have ({seed: accuracy} each): the mean difference, its 95% interval, the
    paired t-test's two-sided p-value (None where every pair differs by the same amount: the test is undefined),
    the count of pairs and the std of the differences; None under two pairs."""
    seeds = sorted(ours.keys() & theirs.keys())
    if len(seeds) < 2:
        return None
    differences = [ours[seed] - theirs[seed] for seed in seeds]
    mean, spread = statistics.fmean(differences), statistics.stdev(differences)
    if spread < SAME:
        return dict(difference=mean, low=mean, high=mean, p=None, pairs=len(seeds), spread=0.0)
    low, high = interval_of_mean(differences)
    t = mean / (spread / math.sqrt(len(seeds)))  # the paired t-test's statistic
    p = 2 * stdtr(len(seeds) - 1, -abs(t))
    return dict(difference=mean, low=low, high=high, p=float(p), pairs=len(seeds), spread=spread)


def holm(p_values: list) -> list:
    """Holm's step-down adjustment of the p-values (same order), so that rejecting where adjusted < 0.05 keeps the
    chance of any false claim among them under 5%."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def seeds_to_resolve(comparisons: list) -> int | None:
    """Seeds the paired test needs, at 5% and 80% power, for the smallest non-zero difference seen:
    7.85 (s_d / difference)^2 + 2, with s_d the std of its per-seed differences."""
    sized = [c for c in comparisons if c["difference"] and c["spread"]]
    if not sized:
        return None
    smallest = min(sized, key=lambda c: abs(c["difference"]))
    return math.ceil(POWER_Z * (smallest["spread"] / smallest["difference"]) ** 2 + 2)
