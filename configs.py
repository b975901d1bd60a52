"""The version table: one row per step of the ablation ladder. A row names its dataset, its recipe (only what
differs from the seed's: see settings.Recipe), its exact parameter count, the accuracies it is compared with and
what it shows."""
from settings import Recipe, Version

ADAM = dict(optimizer="adam", lr=1e-3)
WIDE_BN = dict(width=32, hidden=256, batch_norm=True)
AUGMENT = dict(crop_padding=4, flip="random")
MODERN = dict(normalize=True, optimizer="sgd", momentum=0.9, nesterov=True, label_smoothing=0.2,
              warmup_start=0.2, warmup_fraction=0.23, final_lr_factor=0.07)
AIRBENCH = dict(MODERN, lr=1.5, momentum=0.85, weight_decay=0.0153 / 11.5, norm_bias_lr_scale=64, batch_size=1024,
                drop_last=True, epochs=10)

VERSIONS = {v.number: v for v in [
    Version(1, "mnist", Recipe("MLP"), 79510, (0.95, 0.95),
            "We start with a simple MLP on MNIST"),
    Version(2, "fashion_mnist", Recipe("MLP"), 79510, (0.87, 0.85),
            "MLP on MNIST is already good, so switch to Fashion-MNIST where there is room to improve"),
    Version(3, "fashion_mnist", Recipe("SmallConvNet"), 9402, (0.88, 0.87),
            "A simple conv-net exploits spatial correlation: more accuracy with fewer params"),
    Version(4, "fashion_mnist", Recipe("WideConvNet"), 963338, (0.90, 0.89),
            "An over-powered model tries to overfit, but with SGD it doesn't"),
    Version(5, "fashion_mnist", Recipe("WideConvNet", **ADAM), 963338, (0.99, 0.92),
            "Just switching to Adam overfits, yet test accuracy is good too"),
    Version(6, "cifar10", Recipe("ConvNet4", dict(width=8, hidden=32), **ADAM), 33466, (0.75, 0.66),
            "A simple conv-net on CIFAR-10 doesn't fit even the train set"),
    Version(7, "cifar10", Recipe("ConvNet4", dict(width=8, hidden=32, batch_norm=True), **ADAM), 33706, (0.87, 0.66),
            "Batch normalization fixes the vanishing gradient and improves learning"),
    Version(8, "cifar10", Recipe("ConvNet4", WIDE_BN, **ADAM), 655882, (0.99, 0.76),
            "A bigger conv-net overfits the dataset"),
    Version(9, "cifar10", Recipe("ConvNet4", dict(WIDE_BN, dropout=0.5), **ADAM), 655882, (0.95, 0.81),
            "Dropout trades some train accuracy for better test accuracy"),
    Version(10, "cifar10", Recipe("ConvNet4", dict(WIDE_BN, dropout=0.5), **ADAM, **AUGMENT), 655882, (0.8214, 0.8128),
            "Random crops and flips, made on the device, stop the overfitting", "ours"),
    Version(11, "cifar10", Recipe("ConvNet4", dict(WIDE_BN, dropout=0.5), **AUGMENT, **MODERN, lr=0.4,
                                  weight_decay=5e-4, batch_size=512, epochs=23), 655882, (0.8564, 0.8437),
            "A modern recipe: normalised inputs, Nesterov SGD, weight decay, label smoothing, a warm-up schedule",
            "ours"),
    Version(12, "cifar10", Recipe("AirbenchNet", **AIRBENCH, **AUGMENT), 1960384, (0.9032, 0.8800),
            "A network built for 32x32 images learns far more per second", "ours"),
    Version(13, "cifar10", Recipe("AirbenchNet", **AIRBENCH, whitening=True, crop_padding=2, flip="alternating",
                                  lookahead_from=3, tta="mirror+shift"), 1972792, (0.9534, 0.9071),
            "Patch whitening, alternating flips, lookahead and test-time augmentation", "ours"),
]}
