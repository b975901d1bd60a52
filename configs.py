"""The built-in ladder of ideas, written with the API a user's ladder file uses (ladder.py): each row grows from the
row before it (its parent) by the ideas it names, each a named group of recipe settings in --set's notation, and its
recipe follows from its parent's and its ideas (see settings.Recipe for the seed's defaults, which row 1 keeps).
The number of epochs is a row's own (`epochs=`) unless an idea sets it, as version 15's shorter schedule does, and a
change of dataset is no idea: `python main.py ablate V` takes V's ideas out one at a time, on V's dataset.

A row also names its exact parameter count, the accuracies it is compared with, what it shows, and how long an
epoch of it took on the 2-core CPU of docs/results.md (the seconds of its full run there over its epochs; version
14's from its per-epoch column under "Numerics, compilation and test passes" in docs/speed.md; version 15's from its
reference runs on the AMX Xeon of "Version 15" there, where version 14's epochs take half as long), from which
--dry-run estimates, and the arithmetic of a whole run in TFLOP as runner/arithmetic.py counts it
(tests/test_arithmetic.py counts it again)."""
from ladder import BUILT_IN, VERSIONS, rung
from runner import batch_transforms  # noqa: F401  (registers mixup, cutmix and cutout)

rung(1, "mnist", {}, 79510, (0.95, 0.95), "We start with a simple MLP on MNIST", seconds=19 / 25, tflop=0.519)
rung(2, "fashion_mnist", {}, 79510, (0.87, 0.85),
     "MLP on MNIST is already good, so switch to Fashion-MNIST where there is room to improve", seconds=17 / 25,
     tflop=0.519)
rung(3, "fashion_mnist", {"small conv-net": {"model": "SmallConvNet"}}, 9402, (0.88, 0.87),
     "A simple conv-net exploits spatial correlation: more accuracy with fewer params", seconds=130 / 25, tflop=5.41)
rung(4, "fashion_mnist", {"wide conv-net": {"model": "WideConvNet"}}, 963338, (0.90, 0.89),
     "An over-powered model tries to overfit, but with SGD it doesn't", seconds=2183 / 25, tflop=288)
rung(5, "fashion_mnist", {"Adam": {"optimizer": "adam", "lr": 1e-3}}, 963338, (0.99, 0.92),
     "Just switching to Adam overfits, yet test accuracy is good too", seconds=2974 / 25, tflop=288)
rung(6, "cifar10", {"4-layer conv-net": {"model": "ConvNet4", "model.width": 8, "model.hidden": 32}}, 33466,
     (0.75, 0.66), "A simple conv-net on CIFAR-10 doesn't fit even the train set", seconds=199 / 25, tflop=10.5)
rung(7, "cifar10", {"batch norm": {"model.batch_norm": True}}, 33706, (0.87, 0.66),
     "Batch normalization fixes the vanishing gradient and improves learning", seconds=222 / 25, tflop=10.5)
rung(8, "cifar10", {"wider": {"model.width": 32, "model.hidden": 256}}, 655882, (0.99, 0.76),
     "A bigger conv-net overfits the dataset", seconds=867 / 25, tflop=129)
rung(9, "cifar10", {"dropout": {"model.dropout": 0.5}}, 655882, (0.95, 0.81),
     "Dropout trades some train accuracy for better test accuracy", seconds=963 / 25, tflop=129)
rung(10, "cifar10", {"random crops": {"crop_padding": 4}, "random flips": {"flip": "random"}}, 655882,
     (0.8214, 0.8128), "Random crops and flips, made on the device, stop the overfitting", "ours",
     seconds=912 / 25, tflop=129)
rung(11, "cifar10", {
    "normalised inputs": {"normalize": True},
    "Nesterov SGD": {"optimizer": "sgd", "lr": 0.4, "momentum": 0.9, "nesterov": True},
    "weight decay": {"weight_decay": 5e-4},
    "label smoothing": {"label_smoothing": 0.2},
    "batch 512": {"batch_size": 512},
    "schedule": {"warmup_start": 0.2, "warmup_fraction": 0.23, "final_lr_factor": 0.07},
}, 655882, (0.8564, 0.8437),
    "A modern recipe: normalised inputs, Nesterov SGD, weight decay, label smoothing, a warm-up schedule", "ours",
    epochs=23, seconds=848 / 23, tflop=119)
rung(12, "cifar10", {
    "airbench network": {"model": "AirbenchNet"},
    "airbench optimiser": {"lr": 1.5, "momentum": 0.85, "weight_decay": 0.0153 / 11.5, "norm_bias_lr_scale": 64},
    "batch 1024": {"batch_size": 1024, "drop_last": True},
}, 1960384, (0.9032, 0.8800), "A network built for 32x32 images learns far more per second", "ours", epochs=10,
    autocast=True, seconds=1350 / 10, tflop=420)
rung(13, "cifar10", {
    "whitening": {"whitening": True},
    "translation by 2": {"crop_padding": 2},
    "alternating flips": {"flip": "alternating"},
    "lookahead": {"lookahead_from": 3},
    "test-time augmentation": {"tta": "mirror+shift"},
}, 1972792, (0.9534, 0.9071), "Patch whitening, alternating flips, lookahead and test-time augmentation", "ours",
    autocast=True, seconds=1055 / 10, tflop=386)
rung(14, "cifar10", {
    "Muon": {"optimizer": "muon", "muon_lr": 0.24, "muon_momentum": 0.6, "muon_weight_decay": 0.1},
    "batch 2000": {"batch_size": 2000},
}, 1972792, (0.9533, 0.9075), "Muon orthogonalises the filters' updates, in fewer and larger steps",
    "ours", epochs=8, autocast=True, seconds=98.5, tflop=318)
rung(15, "cifar10", {"shorter schedule": {"epochs": 7}}, 1972792, (0.9423, 0.9037),
     "One epoch fewer: the fewest seconds to 0.90 found on a 2-core CPU", "ours", autocast=True, seconds=329 / 7,
     tflop=280)

VERSIONS.update(BUILT_IN)
