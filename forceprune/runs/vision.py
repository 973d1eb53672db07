"""Image classification: the config and the task adapter of vision runs.

Models come from :mod:`forceprune.models` (trained from scratch, seeded), data from
:mod:`forceprune.data` (MNIST, Fashion-MNIST, CIFAR-10, image folders; no torchvision). MACs are
per image; the model's classifier is never pruned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig, collect, unknown_name, option, required
from .loop import Phase, resolve_device, seed_everything

IMAGEFOLDER_PREFIX = "imagefolder:"
MAX_EPOCHS = 100_000


@dataclass(frozen=True, kw_only=True)
class VisionConfig(RunConfig):
    """One image-classification pruning run. Epoch counts are whole passes over the training set."""

    task_name = "image_classification"

    task: Literal["image_classification"] = option("image_classification", 'The kind of run: "image_classification" (this config; the default when a file has no task key).')
    model: str = required('Model name from the registry, e.g. "lenet5", "resnet20" (see forceprune.models.list_models()).')
    dataset: str = required('Dataset name, e.g. "mnist", "fashion_mnist", "cifar10" or "imagefolder:<path>".')
    force: str = required('Force law name, e.g. "etp", "torque", "electrostatic", "gravity", "group_lasso", a preset ("etp-official"), or "none" (train densely, remove nothing).')
    force_mode: Literal["loss", "prox"] = option("loss", 'How the force acts: "loss" (a penalty added to the loss) or "prox" (a proximal step after each optimizer step, decoupled from the optimizer).')
    capture_every: int = option(10, "Capture every this many optimizer steps (0 = only at epoch end, as ETP's code).")
    download: bool = option(False, "Download the dataset (checksum-verified) into data_dir when it is missing; needs internet.")
    train_subset: int = option(0, "Use only this many training samples (random, seeded); 0 = all. For smoke tests.")
    test_subset: int = option(0, "Use only this many test samples (random, seeded); 0 = all. For smoke tests.")
    epochs: int = option(10, "Epochs of training with the force (the pruning phase).")
    dense_epochs: int = option(0, "Epochs of a dense baseline trained first with the same recipe (gives acc_dense); 0 = no baseline.")
    finetune_epochs: int = option(0, "Epochs of plain fine-tuning after unit removal; 0 = none.")
    batch_size: int = option(128, "Training mini-batch size (samples).")
    eval_batch_size: int = option(512, "Evaluation mini-batch size (samples).")
    optimizer: Literal["sgd", "adamw"] = option("sgd", 'Optimizer: "sgd" (with momentum) or "adamw".')
    lr: float = option(0.05, "Peak learning rate (reached after the warm-up).")
    momentum: float = option(0.9, "SGD momentum in [0, 1); ignored by adamw.")
    weight_decay: float = option(5e-4, "Decoupled (adamw) or L2 (sgd) weight decay; never applied to biases and norm layers.")
    max_grad_norm: float = option(0.0, "Clip the gradient norm to this value before each step; 0 = no clipping.")
    schedule: Literal["cosine", "step", "constant"] = option("cosine", 'Learning-rate schedule after the warm-up: "cosine", "step" or "constant".')
    milestones: tuple[int, ...] = option((), 'Epochs (of `epochs`) at which the "step" schedule multiplies the lr by gamma; other phases use the same fractions of their length.')
    gamma: float = option(0.1, 'Factor of the "step" schedule at each milestone, in (0, 1].')
    warmup_epochs: int = option(0, "Epochs of linear learning-rate warm-up from 0 to lr.")
    deterministic: bool = option(False, "Use deterministic algorithms only (slower on GPU).")
    device: Literal["auto", "cpu", "cuda"] = option("auto", '"auto" = CUDA when available, else CPU.')
    amp: bool = option(True, "Mixed precision (float16 autocast) on CUDA; ignored on CPU.")
    channels_last: bool | Literal["auto"] = option("auto", '"auto" = channels-last memory format for conv models on CPU; or true / false.')
    latency_batch_sizes: tuple[int, ...] = option((1, 64), "Batch sizes (samples) at which latency is measured before and after removal.")
    latency_repeats: int = option(30, "Timed forward passes per model and batch size, split into 5 alternating dense/pruned rounds; the median of the round medians is reported.")

    def check(self) -> list[str]:
        errors = super().check()
        need = collect(errors)
        need(self.epochs >= 1, f"epochs = {self.epochs} is impossible: set epochs to 1 or more")
        for name in ("dense_epochs", "finetune_epochs", "train_subset", "test_subset"):
            need(getattr(self, name) >= 0, f"{name} = {getattr(self, name)} is negative: set it to 0 or more")
        for name in ("epochs", "dense_epochs", "finetune_epochs"):
            need(getattr(self, name) <= MAX_EPOCHS, f"{name} = {getattr(self, name)} is too many: at most {MAX_EPOCHS:,}")
        need(self.latency_repeats >= 3, f"latency_repeats = {self.latency_repeats} is too few: set it to 3 or more, e.g. 30")
        for name in ("batch_size", "eval_batch_size"):
            need(getattr(self, name) >= 1, f"{name} = {getattr(self, name)} is impossible: set it to 1 or more")
        need(self.lr > 0, f"lr = {self.lr} must be > 0: set e.g. lr = 0.05")
        need(0 <= self.momentum < 1, f"momentum = {self.momentum} must be in [0, 1): set e.g. momentum = 0.9")
        need(self.weight_decay >= 0, f"weight_decay = {self.weight_decay} must be >= 0: set e.g. weight_decay = 5e-4")
        need(self.max_grad_norm >= 0, f"max_grad_norm = {self.max_grad_norm} must be >= 0 (0 = no clipping)")
        need(0 < self.gamma <= 1, f"gamma = {self.gamma} must be in (0, 1]: set e.g. gamma = 0.1")
        need(0 <= self.warmup_epochs < max(self.epochs, 1), f"warmup_epochs = {self.warmup_epochs} must be in [0, epochs = {self.epochs}): lower it")
        if self.schedule == "step":
            need(len(self.milestones) > 0, f'schedule = "step" needs milestones, e.g. milestones = [{max(1, self.epochs // 2)}]')
        need(list(self.milestones) == sorted(set(self.milestones)) and all(0 < m < self.epochs for m in self.milestones),
             f"milestones = {list(self.milestones)} must be increasing epochs strictly between 0 and epochs = {self.epochs}")
        need(len(self.latency_batch_sizes) > 0 and all(b >= 1 for b in self.latency_batch_sizes),
             f"latency_batch_sizes = {list(self.latency_batch_sizes)} must be a non-empty list of batch sizes >= 1, e.g. [1, 64]")
        need(self.capture_every >= 0, f"capture_every = {self.capture_every} must be >= 0 (0 = capture at epoch end only)")
        return errors

    def check_names(self) -> list[str]:
        from ..data import list_datasets
        from ..models import list_models

        errors = []
        if self.model not in list_models():
            errors.append(unknown_name("model", self.model, list_models()))
        if not self.dataset.startswith(IMAGEFOLDER_PREFIX) and self.dataset not in list_datasets():
            errors.append(unknown_name("dataset", self.dataset, list_datasets()) + f' or "{IMAGEFOLDER_PREFIX}<path>"')
        if not errors:
            errors += super().check_names()
        if self.device == "cuda" and not torch.cuda.is_available():
            errors.append('device = "cuda" but CUDA is not available here; use device = "auto" or "cpu"')
        return errors


class VisionTask:
    """The data, model factory, objective and recipes of an image-classification run."""

    eval_split = "test"

    def __init__(self, config: VisionConfig):
        from ..data import BatchLoader, load_dataset

        self.config = c = config
        self.device = resolve_device(c.device)
        train_set, test_set, self.info = load_dataset(c.dataset, root=c.data_dir, augment=True, download=c.download)
        train_set, test_set = _subset(train_set, c.train_subset, c.seed), _subset(test_set, c.test_subset, c.seed)
        self.train_batches = BatchLoader(train_set, c.batch_size, shuffle=True, augment=True, seed=c.seed)
        self.eval_batches = BatchLoader(test_set, c.eval_batch_size)
        self.extra_evals: dict[str, Any] = {}
        calibration, _ = test_set.batch(torch.arange(min(64, len(test_set))))
        self.channels_last = False
        self.calibration_inputs = self.to_device(calibration)
        self.example_inputs = self.calibration_inputs[:1].clone()  # one image: MACs are per sample
        self.dataset_note = self.info.note

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def build_model(self) -> nn.Module:
        """A freshly initialised model (seeded: every phase starts from the same weights) on the device."""
        from ..models import create_model

        c = self.config
        seed_everything(c.seed, c.deterministic)
        model = create_model(c.model, num_classes=self.info.num_classes, in_channels=self.info.input_shape[0])
        return self._placed(model)

    def _placed(self, model: nn.Module) -> nn.Module:
        """On the device, and channels-last when the config says so (``"auto"``: conv models on CPU)."""
        model = model.to(self.device)
        setting = self.config.channels_last
        self.channels_last = (self.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
                              if setting == "auto" else bool(setting))
        return self.formatted(model)

    def formatted(self, model: nn.Module) -> nn.Module:
        """The model in the run's memory format (removal re-creates weights in the default one)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def objective(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = model(self.to_device(x))
        y = y.to(self.device, non_blocking=True)
        return F.cross_entropy(logits, y), logits, y

    def phase(self, name: str) -> Phase:
        return vision_phase(self.config, name)

    def method_options(self, model: nn.Module) -> dict:
        """ForcePruner options of this task: the classifier is never pruned."""
        from ..models import output_layers

        return {"ignored_layers": output_layers(model)}

    def latency_inputs(self) -> dict[str, torch.Tensor]:
        """Random images per batch size of the config (``{"1": x1, "64": x64}``)."""
        shape = tuple(self.info.input_shape)
        return {str(b): self.to_device(torch.randn(b, *shape, device=self.device)) for b in self.config.latency_batch_sizes}

    def latency_settings(self) -> dict:
        return {"rounds": 5, "repeats": max(1, self.config.latency_repeats // 5), "warmup": 3, "threads": None}

    def describe(self, model: nn.Module) -> dict:
        return {}

    def save(self, model: nn.Module, method: Any, path: Path, origin: dict | None = None) -> None:
        """The pruned model with its plan (``plan.json`` + ``model.safetensors``); ``origin``
        (what the run was made from) is recorded in the plan."""
        from ..plan import make_plan, save_pruned

        plan = make_plan(method, model_name=self.config.model,
                         model_kwargs={"num_classes": self.info.num_classes, "in_channels": self.info.input_shape[0]})
        save_pruned(model, {**plan, "origin": origin} if origin else plan, path, overwrite=True)

    def load(self, path: Path) -> nn.Module:
        """A model saved by :meth:`save`, on the device and in the run's memory format."""
        from ..plan import load_pruned

        return self._placed(load_pruned(path)[0])


def vision_phase(c: VisionConfig, name: str) -> Phase:
    """The recipe of a phase (``"dense"``, ``"force"``, ``"finetune"``): the dense baseline and
    the force phase share it; fine-tuning has no warm-up and 0.1 x lr unless ``finetune_lr``."""
    fractions = tuple(m / c.epochs for m in c.milestones)
    common = dict(schedule=c.schedule, milestones=fractions, gamma=c.gamma, optimizer=c.optimizer,
                  momentum=c.momentum, weight_decay=c.weight_decay, max_grad_norm=c.max_grad_norm)
    if name == "finetune":
        lr = c.finetune_lr if c.finetune_lr is not None else 0.1 * c.lr
        return Phase(name, c.finetune_epochs, lr, **common)
    epochs = c.dense_epochs if name == "dense" else c.epochs
    return Phase(name, epochs, c.lr, warmup_epochs=min(c.warmup_epochs, max(epochs - 1, 0)), **common)


def _subset(dataset: Any, n: int, seed: int) -> Any:
    if not n or n >= len(dataset):
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return type(dataset)(dataset.images[index], dataset.labels[index], dataset.mean, dataset.std, dataset.augmentation)
