"""The ``llm`` benchmark suite: SmolLM2-135M pruned to 1.25x and 1.5x fewer non-embedding
parameters, ETP against the two one-shot methods a user tries first, at matched widths and with
the same recovery tokens.

    forceprune bench llm                         # the CPU budget below (one seed: 0)

Protocol (every method starts from the same pretrained SmolLM2-135M-Instruct, de-quantised from
its Q4_1 GGUF file to fp32: that fp32 model is the dense baseline):

* text: SST-2 training sentences (``train_tokens``, 128-token sequences); perplexity on
  ``eval_tokens`` of SST-2 dev + SentEval test sentences (in domain) and of TREC questions (out
  of domain); final numbers, nothing selected on either;
* **ETP**: ``epochs`` over the training tokens with the exponential-torque force on FFN neurons
  (``kinds``; units ranked by ``importance``: Wanda's ``|W| x ||X||`` from the dense model's
  activations by default; ranked pivot, proximal step after AdamW, the planning budget controller
  with ``target_nonembedding = level``, ``spare_keepers``), distilled from the dense model;
  removal (exact zeros); ``finetune_epochs`` of distilled recovery;
* **Torch-Pruning's LLM recipe** (``tp-group-norm``): magnitude ranking of the pretrained model,
  one width per kind in every layer (ETP's mean width, rounded), then the same recovery;
* **Wanda-sp** (``wanda-sp``): |W| x ||X|| from training-text activations, at ETP's per-layer
  widths, then the same recovery.

The baselines get only the recovery tokens; ETP also trains with the force, which is the
method. Last, the dense model is fine-tuned *without* pruning for ETP's force + recovery steps: on
this text fine-tuning alone lowers perplexity a lot (SST-2's sentences are lowercased and
tokenised), so each point is read against it as well as against the pretrained model. Per point it records perplexities, widths, MACs per token, prefill latency and decode
tokens/s side by side, peak memory, and for ETP the pruner's construction time and the force's
step-time overhead. Results are rewritten after every point, so a stopped suite keeps what ran.
"""
from __future__ import annotations

import datetime
import statistics
import time
from pathlib import Path
from typing import Any

from forceprune.baselines import GROUP_NORM, WANDA
from forceprune.errors import ForcePruneError

from .common import fmt_cell, machine, step_overhead, write_result

METHODS = ("etp", "tp_group_norm", "wanda_sp")
FORCE = {"etp": "etp", "tp_group_norm": GROUP_NORM, "wanda_sp": WANDA}
TARGET_PPL_RISE = {0.8: 0.15, 0.667: 0.40}  # the targets: final ppl within +15 % / +40 % of dense


def _widths(report: dict, uniform: bool, kinds) -> dict[str, int]:
    """Per-layer widths of the pruned ``kinds`` keyed as the run config takes them, from a
    finished ETP report; with ``uniform`` every layer gets the rounded mean (Torch-Pruning's
    LLM recipe)."""
    kv, ffn = report["kv_heads_after"], report["ffn_after"]
    if uniform:
        kv, ffn = [max(1, round(statistics.mean(kv)))] * len(kv), [max(1, round(statistics.mean(ffn)))] * len(ffn)
    widths = {f"model.layers.{i}.mlp.up_proj": f for i, f in enumerate(ffn)} if "neuron" in kinds else {}
    if "kv_group" in kinds:
        widths.update({f"model.layers.{i}.self_attn": k for i, k in enumerate(kv)})
    return widths


def _point(config: dict, measure: bool, dense_ood: bool, progress: bool) -> tuple[dict, dict]:
    """One run through the pipeline's stages (nothing saved); with ``measure`` also the pruner's
    construction time and the force's step overhead, with ``dense_ood`` the dense model's
    out-of-domain perplexity."""
    import math

    from forceprune.runs import config_from_dict
    from forceprune.runs.loop import evaluate
    from forceprune.runs.lm import LMTask
    from forceprune.runs.stages import Run, build_method, calibrate_method, prune_stage, train_stage

    cfg = config_from_dict(config)
    task = LMTask(cfg)
    extra: dict[str, Any] = {}

    def timed_build(task_, model, total_steps):
        started = time.perf_counter()
        method = build_method(task_, model, total_steps, calibrate=False)
        extra["construction_s"] = time.perf_counter() - started
        calibrate_method(task_, method)
        extra["calibration_s"] = time.perf_counter() - started - extra["construction_s"]
        return method

    def before_removal(model, method) -> None:
        if measure:
            extra["step_overhead"] = step_overhead(model, method, task, steps=3, prox=True)
        if dense_ood:
            loss = evaluate(task.build_model(), task.extra_evals["out_of_domain"], task.objective).loss
            extra["ppl_dense_out_of_domain"] = math.exp(min(loss, 50.0))

    run = Run(Path(cfg.output_dir), progress=progress, checkpoints=False)
    trained = train_stage(task, run, method_factory=timed_build)
    report = prune_stage(task, run, trained, write=False, before_removal=before_removal)
    return report, extra


def run_suite(
    levels: tuple[float, ...] = (0.8, 0.667),
    methods: tuple[str, ...] = METHODS,
    *,
    seed: int = 0,
    train_tokens: int = 40_960,
    eval_tokens: int = 2_048,
    epochs: float = 1.0,
    finetune_epochs: float = 0.2,
    beta: float = 0.2,
    lr: float = 5e-5,
    kinds: tuple[str, ...] = ("neuron",),
    importance: str = "activation",
    threads: int = 2,
    model: str = "smollm2-135m",
    data_dir: str | None = None,
    output_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    name: str = "llm",
    config: dict | None = None,
    reference: bool = True,
    progress: bool = True,
) -> dict:
    """Run the suite (ETP first at each level: the baselines take its widths); writes
    ``<name>.json``, ``.md`` and ``.png`` under ``output_dir`` (default ``benchmarks/results``)
    after every point and returns the result. ``config`` overrides keys of every run's config;
    ``reference`` ends with the dense model fine-tuned for ETP's steps without pruning."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or "etp" not in methods:
        raise ForcePruneError(f"llm methods must include etp (the baselines take its widths); got {list(methods)}, "
                              f"available: {', '.join(METHODS)}.")
    if any(not 0 < lv < 1 for lv in levels):
        raise ForcePruneError(f"levels are kept non-embedding fractions in (0, 1), got {list(levels)}.")
    distill = {"alpha": 0.5, "temperature": 2.0}
    common: dict[str, Any] = dict(
        task="language_modeling", model=model, dataset="sst2", data_dir=data_dir, force_mode="prox",
        prune_kinds=list(kinds), context=128, train_tokens=train_tokens, eval_tokens=eval_tokens,
        finetune_epochs=finetune_epochs, lr=lr, batch_size=4, capture_every=1, threads=threads, seed=seed,
        distill=distill, latency_repeats=2, generate_tokens=12,
    )
    common.update(config or {})
    work = Path(work_dir or Path("runs") / f"bench_{name}")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "SmolLM2-135M (fp32 de-quantised from Q4_1 GGUF): held-out perplexity against kept non-embedding parameters",
        "command": "forceprune bench llm", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(threads), "seed": seed,
        "budget": {"train_tokens": train_tokens, "eval_tokens": eval_tokens, "context": common["context"],
                   "batch_size": common["batch_size"], "epochs_force": epochs, "epochs_recovery": finetune_epochs,
                   "lr": lr, "beta_start": beta, "distill": distill, "kinds": list(kinds), "importance": importance},
        "points": [], "runs": {}, "dense": {},
    }
    for level in levels:
        etp_report = None
        for method in ("etp", *[m for m in methods if m != "etp"]):
            label = f"{method}@{level:g}"
            cfg = {**common, "output_dir": str(work / f"{method}_{level:g}")}
            if method == "etp":
                cfg.update(force="etp", epochs=epochs, target_nonembedding=level, spare_keepers=True, importance=importance,
                           force_options={"beta": beta, "pivot": "ranked", "norm": "l2"})
            else:  # one-shot at ETP's widths: no target, so no budget controller
                cfg.pop("budget", None)
                cfg.update(force=FORCE[method], epochs=0.0, widths=_widths(etp_report, method == "tp_group_norm", kinds))
            if progress:
                print(f"\n=== {label} ===", flush=True)
            report, extra = _point(cfg, measure=method == "etp", dense_ood=not result["dense"], progress=progress)
            if not result["dense"]:
                result["dense"] = {"ppl": report["ppl_dense"], "ppl_out_of_domain": extra.pop("ppl_dense_out_of_domain"),
                                   "nonembedding_params": report["nonembedding_params_before"],
                                   "macs_per_token": report["macs_before"] / common["context"]}
            etp_report = report if method == "etp" else etp_report
            result["points"].append(_row(method, level, report, extra, common["context"]))
            result["runs"][label] = {k: v for k, v in report.items() if k not in ("history", "force_field")}
            result["seconds"] = time.perf_counter() - started
            write_result(result, Path(output_dir or "benchmarks/results"), name, markdown, plot)
    if reference:
        result["dense"]["finetuned"] = _finetuned_reference(common, epochs + finetune_epochs, work, progress)
        result["seconds"] = time.perf_counter() - started
        write_result(result, Path(output_dir or "benchmarks/results"), name, markdown, plot)
    if progress:
        print("\n" + markdown(result))
    return result


def _finetuned_reference(common: dict, epochs: float, work: Path, progress: bool) -> dict:
    """The dense model fine-tuned without pruning for as many steps as ETP trains in all (force +
    recovery, same text, same distillation): what is left of a pruned model's perplexity once
    adapting to the training text is taken out."""
    if progress:
        print("\n=== dense fine-tuned, no pruning ===", flush=True)
    cfg = {**common, "output_dir": str(work / "dense_finetuned"), "force": "none", "epochs": epochs,
           "finetune_epochs": 0.0}
    cfg.pop("budget", None)  # no target, so no budget controller
    report, _ = _point(cfg, measure=False, dense_ood=False, progress=progress)
    return {"ppl": report["ppl_final"], "ppl_out_of_domain": report["ppl_out_of_domain"], "epochs": epochs,
            "train_s": report["train_wall_s"]}


def _row(method: str, level: float, r: dict, extra: dict, context: int) -> dict:
    (label, before), = r["latency_ms_before"].items()
    comparison = r.get("comparison") or {}
    kept = r["nonembedding_params_after"] / r["nonembedding_params_before"]
    return {
        "method": method, "level": level, "ppl_dense": r["ppl_dense"], "ppl_before_removal": r["ppl_before_removal"],
        "ppl_after_removal": r["ppl_after_removal"], "ppl_final": r["ppl_final"],
        "ppl_out_of_domain": r["ppl_out_of_domain"], "ppl_rise": r["ppl_final"] / r["ppl_dense"] - 1.0,
        "removal_lossless_4_digits": (f"{r['ppl_after_removal']:.4g}" == f"{r['ppl_before_removal']:.4g}"),
        "nonembedding_kept": kept, "nonembedding_reduction": 1.0 / kept, "params_after": r["params_after"],
        "macs_per_token_after": r["macs_after"] / context, "kv_heads_after": r["kv_heads_after"],
        "query_heads_after": r["query_heads_after"], "ffn_after": r["ffn_after"],
        "prefill": label, "prefill_ms_before": before, "prefill_ms_after": r["latency_ms_after"][label],
        "decode_tokens_per_s": comparison.get("decode_tokens_per_s"), "peak_rss_mb": comparison.get("peak_rss_mb"),
        "generations": comparison.get("generations"), "max_output_error": r["max_output_error"],
        "train_s": r["train_wall_s"], "wall_s": r["wall_s"], **extra,
    }


def _reference_line(dense: dict) -> str:
    ft = dense.get("finetuned")
    if not ft:
        return "Dense fine-tuned without pruning: not run (`reference=False`)."
    return (f"Dense fine-tuned **without pruning** for ETP's {ft['epochs']:g} epoch(s) (force + recovery steps, same "
            f"text and distillation): perplexity {fmt_cell(ft['ppl'])} in domain, {fmt_cell(ft['ppl_out_of_domain'])} "
            "out of domain. Fine-tuning alone adapts the model to SST-2's lowercased, tokenised sentences, so 'vs "
            "dense' (the pretrained model) flatters every method that trains; 'vs fine-tuned dense' is the cost of "
            "pruning.")


def markdown(result: dict) -> str:
    b, d = result["budget"], result["dense"]
    ft = d.get("finetuned")
    lines = [
        f"### {result['benchmark']}", "",
        f"`{result['command']}` — {result['date']}, {result['machine']}, total {result.get('seconds', 0) / 60:.1f} min, "
        f"seed {result['seed']}. Dense = the pretrained model (fp32 de-quantised from its Q4_1 GGUF file): perplexity "
        f"{fmt_cell(d.get('ppl'))} in domain (SST-2 dev + test sentences), {fmt_cell(d.get('ppl_out_of_domain'))} out of "
        f"domain (TREC questions), {b['eval_tokens']} tokens each. Training text: {b['train_tokens']} tokens of SST-2 "
        f"training sentences in {b['context']}-token sequences, batch {b['batch_size']}. ETP trains {b['epochs_force']} "
        f"epoch(s) with the force, then every method recovers {b['epochs_recovery']} epoch(s) distilled from the dense "
        f"model ({b['distill']}); the baselines get only that recovery. Torch-Pruning's recipe: uniform widths (ETP's "
        "mean); Wanda-sp: ETP's per-layer widths. Final numbers, nothing selected on the held-out text.", "",
        _reference_line(d), "",
        "| kept non-emb. | method | ppl before removal | after removal | final ppl | vs dense | target "
        "| vs fine-tuned dense | out-of-domain ppl | × fewer non-emb. | KV groups / FFN per layer (mean) "
        "| prefill ms dense → pruned | decode tok/s dense → pruned | construction / calibration s | force step overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["points"]:
        target = TARGET_PPL_RISE.get(r["level"])
        tok = r.get("decode_tokens_per_s") or {}
        vs_finetuned = f"{r['ppl_final'] / ft['ppl'] - 1:+.1%}" if ft else "–"
        lines.append(
            f"| {r['level']:g} | {r['method']} | {fmt_cell(r['ppl_before_removal'])} | {fmt_cell(r['ppl_after_removal'])} "
            f"| {fmt_cell(r['ppl_final'])} | {r['ppl_rise']:+.1%} | {'–' if target is None else f'≤ +{target:.0%}'} "
            f"| {vs_finetuned} "
            f"| {fmt_cell(r['ppl_out_of_domain'])} | {r['nonembedding_reduction']:.3f} "
            f"| {statistics.mean(r['kv_heads_after']):.2f} / {statistics.mean(r['ffn_after']):.0f} "
            f"| {r['prefill_ms_before']:.0f} → {r['prefill_ms_after']:.0f} "
            f"| {fmt_cell(tok.get('dense'), '{:.1f}')} → {fmt_cell(tok.get('pruned'), '{:.1f}')} "
            f"| {fmt_cell(r.get('construction_s'), '{:.1f}')} / {fmt_cell(r.get('calibration_s'), '{:.1f}')} "
            f"| {fmt_cell(r.get('step_overhead'), '{:+.0%}')} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Final in-domain perplexity (log scale: the magnitude baseline is thousands of times worse)
    against the non-embedding reduction, one line per method, with the pretrained and the
    fine-tuned dense models as references."""
    from forceprune.visual.plots import curve_axes

    with curve_axes(path, title="SmolLM2-135M", xlabel="non-embedding parameters reduction (dense / pruned)",
                    ylabel="held-out perplexity (in domain, log)") as ax:
        ax.set_yscale("log")
        dense = result["dense"]
        if dense:
            ax.axhline(dense["ppl"], color="k", lw=1, ls="--", label="dense (pretrained)")
        if dense.get("finetuned"):
            ax.axhline(dense["finetuned"]["ppl"], color="k", lw=1, ls=":", label="dense fine-tuned, no pruning")
        for method in dict.fromkeys(r["method"] for r in result["points"]):
            rows = sorted((r["nonembedding_reduction"], r["ppl_final"]) for r in result["points"] if r["method"] == method)
            ax.plot(*zip(*rows), marker="o", label=method)
