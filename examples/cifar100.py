"""The airbench recipes of versions 12-14 on CIFAR-100, and cutout as an idea over version 13.

    python main.py --ladder examples/cifar100.py list
    python main.py --ladder examples/cifar100.py 113 --data-dir DIR     # DIR/cifar-100-python/{train,test,meta}
    python main.py --ladder examples/cifar100.py ablate 213 --seeds 0-2 --epochs 2

Rows 112-114 are built-in 12-14's recipes on CIFAR-100 (a change of dataset is no idea, so they have none); the
models predict its 100 classes. Row 213 is built-in 13 with cutout, on CIFAR-10. No CIFAR-100 run of these rows was
made on the machine the docs were measured on (it has no copy of CIFAR-100); the ablation of 213 was, and
docs/extending.md has its table.
"""
from ladder import builtin, rung

rung(112, "cifar100", {}, parent=builtin(12), params=1_983_424, remark="Built-in 12 on CIFAR-100")
rung(113, "cifar100", {}, parent=builtin(13), params=1_995_832, remark="Built-in 13 on CIFAR-100")
rung(114, "cifar100", {}, parent=builtin(14), params=1_995_832, remark="Built-in 14 on CIFAR-100")
rung(213, "cifar10", {"cutout": {"batch_transform": "cutout", "batch_transform.size": 8}}, parent=builtin(13),
     params=1_972_792, remark="Built-in 13 with an 8x8 square of each training image cut out")
