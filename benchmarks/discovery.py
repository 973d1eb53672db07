"""How long ``ForcePruner(model, inputs)`` takes to find a transformer's units (no training).

    python -m benchmarks.discovery [--repeats 3] [--threads 2] [--tp-timeout 60] [--output-dir benchmarks/results]

Models are randomly initialised from configs (nothing is downloaded); their construction is
not timed. Rows: a 30-layer decoder of SmolLM2-135M's shape (hidden 576, 9 query / 3 key-value
heads, FFN 1536, vocabulary 49152, tied embeddings), the issue's 2-layer Llama of width 64
with grouped-query attention, and the tiny zoo families. The last row is torch-pruning's own
whole-graph group search (``DependencyGraph.build_dependency`` + ``get_all_groups``) on a
1-layer grouped-query Llama of width 64, run in a subprocess and stopped after
``--tp-timeout`` seconds: the search forceprune no longer hands transformer blocks to.
Writes ``discovery.json`` and ``discovery.md`` under the output directory and prints the table.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import machine, write_result

ROOT = Path(__file__).resolve().parent


def _decoder(**kw):
    import transformers as T

    cfg = T.LlamaConfig(**kw)
    with torch.no_grad():
        return T.LlamaForCausalLM(cfg).eval()


def smollm2_shape():
    return _decoder(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, head_dim=64)


def tiny_llama():
    return _decoder(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=96, vocab_size=128)


def _zoo(name):
    def build():
        sys.path.insert(0, str(ROOT.parent / "tests"))
        import hf_zoo

        return hf_zoo.build(name)[0]

    return build


MODELS = {
    "SmolLM2-135M shape, 30 layers": (smollm2_shape, 16),
    "Llama 2 layers, width 64, GQA 4/2": (tiny_llama, 16),
    **{f"zoo: {n}": (_zoo(n), 16) for n in ("gpt2", "qwen3", "phi3", "vit", "bert", "torch_encoder")},
}


def _inputs(model, length: int):
    if type(model).__name__.startswith("ViT"):
        return torch.randn(1, 3, model.config.image_size, model.config.image_size)
    return {"input_ids": torch.randint(0, 100, (1, length), generator=torch.Generator().manual_seed(0))}


def time_discovery(build, length: int, repeats: int) -> dict:
    """Median seconds of ``ForcePruner(model, inputs)`` over ``repeats`` builds on one model."""
    import forceprune as fp

    model = build()
    inputs = _inputs(model, length)
    times, pruner = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = fp.ForcePruner(model, inputs)
        times.append(time.perf_counter() - t0)
    kinds = {}
    for us in pruner.unit_sets:
        kinds[us.kind] = kinds.get(us.kind, 0) + 1
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": statistics.median(times), "runs": times, "unit_sets": len(pruner.unit_sets),
            "units": sum(us.size for us in pruner.unit_sets), "kinds": kinds, "params": params}


def _torch_pruning_search(queue) -> None:
    import torch_pruning as tp

    model = _decoder(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=96, vocab_size=128)
    model.config.use_cache = False
    t0 = time.perf_counter()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs={"input_ids": torch.ones(1, 16, dtype=torch.long)},
                                                  verbose=False)
    groups = len(list(graph.get_all_groups(ignored_layers=[model.lm_head])))
    queue.put((time.perf_counter() - t0, groups))


def time_torch_pruning(timeout: float) -> dict:
    """torch-pruning's whole-graph group search on a 1-layer GQA Llama, stopped after ``timeout`` s."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_torch_pruning_search, args=(queue,))
    t0 = time.perf_counter()
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"seconds": None, "stopped_after": round(time.perf_counter() - t0, 1)}
    seconds, groups = queue.get()
    return {"seconds": seconds, "groups": groups}


def markdown(result: dict) -> str:
    lines = [f"Unit discovery: `ForcePruner(model, inputs)` ({result['machine']}, {result['date']}; median of "
             f"{result['repeats']}; `{result['command']}`)", "",
             "| model | params | unit sets (kinds) | units | seconds |", "|---|---:|---|---:|---:|"]
    for name, row in result["rows"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["kinds"].items()))
        lines.append(f"| {name} | {row['params'] / 1e6:.1f} M | {row['unit_sets']} ({kinds}) | {row['units']:,} | "
                     f"{row['seconds']:.2f} |")
    tp_row = result["torch_pruning"]
    took = (f"{tp_row['seconds']:.1f} s ({tp_row['groups']} groups)" if tp_row["seconds"] is not None
            else f"did not finish, stopped after {tp_row['stopped_after']} s")
    lines += ["", f"torch-pruning's whole-graph group search on a 1-layer GQA Llama of width 64: {took}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tp-timeout", type=float, default=60.0, help="seconds before torch-pruning's search is stopped")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    for name, (build, length) in MODELS.items():
        if args.only and name not in args.only.split(","):
            continue
        rows[name] = time_discovery(build, length, args.repeats)
        print(f"{name:40s} {rows[name]['seconds']:7.2f} s  {rows[name]['unit_sets']} unit sets", flush=True)
    result = {"machine": machine(args.threads), "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
              "command": " ".join(["python -m benchmarks.discovery", *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows, "torch_pruning": time_torch_pruning(args.tp_timeout)}
    print(write_result(result, Path(args.output_dir), "discovery", markdown))
    return result


if __name__ == "__main__":
    main()
