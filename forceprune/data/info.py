"""``DatasetInfo`` and the static facts (classes, shapes, normalisation) of the built-in datasets."""
from __future__ import annotations

from dataclasses import dataclass

JPEG_NOTE = ("JPEG-derived (quality 75) copy: compare methods side by side, "
             "do not quote against published accuracies")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a report need to know about a dataset.

    ``input_shape`` is (C, H, W) in pixels; ``mean``/``std`` are per-channel, in [0, 1] pixel units,
    and are what the datasets normalise with; ``note`` flags caveats (e.g. a JPEG-derived copy).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    note: str = ""
    class_names: tuple[str, ...] = ()


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")

BUILTIN: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,),
                         class_names=tuple(str(i) for i in range(10))),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,),
                                 class_names=FASHION_CLASSES),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           class_names=CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
