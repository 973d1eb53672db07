"""Language-model runs through the one pipeline, on a tiny SmolLM-shaped Llama saved as a folder
(9 query / 3 key-value heads, tied embeddings) and tiny SST-2 / TREC text: no download, and the
135 M model is never loaded."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from forceprune.errors import ForcePruneError  # noqa: E402
from forceprune.runs import config_from_dict, run  # noqa: E402
from forceprune.text.lm import SequenceBatches, check_gguf, load_causal_lm, token_sequences  # noqa: E402

WORDS = "the a movie film plot was is good bad great dull fun very not and of it what who when where why".split()


def _text(root: Path) -> None:
    g = torch.Generator().manual_seed(0)

    def sentence():
        k = int(torch.randint(4, 12, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    (root / "sst2/glue").mkdir(parents=True)
    (root / "sst2/senteval").mkdir(parents=True)
    (root / "trec").mkdir()
    (root / "sst2/glue/train.tsv").write_text("sentence\tlabel\n" + "".join(f"{sentence()}\t1\n" for _ in range(300)))
    (root / "sst2/glue/dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{sentence()}\t0\n" for _ in range(60)))
    (root / "sst2/senteval/sentiment-test").write_text("".join(f"{sentence()}\t1\n" for _ in range(60)))
    (root / "trec/train_5500.label").write_text("".join(f"DESC:manner {sentence()} ?\n" for _ in range(60)))
    (root / "trec/TREC_10.label").write_text("".join(f"HUM:ind {sentence()} ?\n" for _ in range(30)))


def _model(root: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "?", *WORDS])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", eos_token="</s>")
    assert len(tokenizer) == len(vocab) and tokenizer("the movie ?")["input_ids"] == [vocab["the"], vocab["movie"], 2]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=72, num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
                                         intermediate_size=96, vocab_size=64, tie_word_embeddings=True,
                                         max_position_embeddings=64))
    out = root / "tiny_llama"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture
def lm_files(tmp_path):
    _text(tmp_path)
    return tmp_path, _model(tmp_path)


def _config(root: Path, model: Path, **overrides):
    return config_from_dict({
        "task": "language_modeling", "model": str(model), "data_dir": str(root), "context": 16, "train_tokens": 1024,
        "eval_tokens": 256, "batch_size": 4, "epochs": 2.0, "finetune_epochs": 0.5, "lr": 5e-3, "warmup_ratio": 0.0,
        "force_options": {"beta": 0.5, "pivot": "ranked"}, "generate_tokens": 4, "latency_repeats": 1,
        "output_dir": str(root / "run"), **overrides})


def test_token_sequences_and_batches():
    class Tokens:
        eos_token_id = 9

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    seqs = token_sequences(Tokens(), ["aa bbb", "c dddd ee", "f"], context=3, max_tokens=6)
    assert seqs == [[2, 3, 9], [1, 4, 2]]
    batches = SequenceBatches(seqs * 3, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 2 and batches.tokens == 18
    first = next(iter(batches))
    assert torch.equal(first["input_ids"], first["labels"]) and first["input_ids"].shape == (4, 3)
    with pytest.raises(ForcePruneError, match="fewer than one sequence"):
        token_sequences(Tokens(), ["aa"], context=8)


def test_a_language_model_is_pruned_end_to_end_with_a_target_and_distillation(lm_files, capsys):
    root, model = lm_files
    config = _config(root, model, target_nonembedding=0.7, budget={"every": 2}, distill={"alpha": 0.5, "temperature": 2.0},
                     prune_kinds=["kv_group", "neuron"])
    report = run(config, progress=False)
    assert report["task"] == "language_modeling" and report["eval_split"] == "in_domain"
    assert report["history"][0]["phase"] == "start", "the pretrained model is evaluated: it is the dense baseline"
    assert report["ppl_dense"] == pytest.approx(math.exp(report["history"][0]["eval_loss"]))
    assert report["max_output_error"] < 1e-5 and report["ppl_after_removal"] == pytest.approx(report["ppl_before_removal"])
    kept = report["nonembedding_params_after"] / report["nonembedding_params_before"]
    assert kept == pytest.approx(0.7, abs=0.05)
    assert report["kv_heads_before"] == [3, 3] and sum(report["kv_heads_after"]) + sum(report["ffn_after"]) < 6 + 192
    assert report["ppl_out_of_domain"] > 0 and report["extra_splits"] == ["out_of_domain"]
    gens = report["comparison"]["generations"]
    assert [g["prompt"] for g in gens] == list(config.prompts) and all("dense" in g and "pruned" in g for g in gens)
    assert set(report["comparison"]["decode_tokens_per_s"]) == {"dense", "pruned"}
    saved = json.loads((root / "run" / "report.json").read_text())
    assert saved["ppl_final"] == report["ppl_final"]
    page = (root / "run" / "report.html").read_text()
    assert "Held-out perplexity" in page and "Greedy generations" in page and "top-1" not in page
    from forceprune.cli import print_report

    print_report(report, root / "run")
    printed = capsys.readouterr().out
    assert "Perplexity: after removal" in printed and "Non-embedding parameters" in printed and "Accuracy" not in printed
    from forceprune.runs import evaluate_run

    assert evaluate_run(root / "run")["perplexity"] == pytest.approx(report["ppl_final"], rel=1e-9), "reloads bit-identical"


def test_killed_then_resumed_matches(lm_files, monkeypatch):
    from forceprune.runs import Trainer

    root, model = lm_files
    straight = run(_config(root, model, output_dir=str(root / "a"), finetune_epochs=0.0), progress=False)
    original = Trainer.train_epoch

    def killed(self):
        if self.phase.name == "force" and self.epoch == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run(_config(root, model, output_dir=str(root / "b"), finetune_epochs=0.0), progress=False)
    monkeypatch.undo()
    resumed = run(_config(root, model, output_dir=str(root / "b"), finetune_epochs=0.0), resume=True, progress=False)
    assert resumed["ppl_final"] == straight["ppl_final"]
    assert [r.get("eval_loss") for r in resumed["history"]] == [r.get("eval_loss") for r in straight["history"]]


@pytest.mark.parametrize("data, message", [(b"", "is not a GGUF file"), (b"GGUF\x03\x00", "is truncated"),
                                           (b"PK\x03\x04 a zip", "is not a GGUF file")])
def test_bad_gguf_files(tmp_path, data, message):
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    with pytest.raises(ForcePruneError, match=message):
        check_gguf(path)
    with pytest.raises(ForcePruneError, match=message):
        load_causal_lm(path)


def test_bad_inputs_before_training(lm_files):
    root, model = lm_files
    with pytest.raises(ForcePruneError, match="longer than the model's 64 positions"):
        run(_config(root, model, context=128, train_tokens=4096, eval_tokens=512), progress=False)
    assert "not an offline alias" in config_from_dict({"task": "language_modeling", "model": str(root / "nope")}).check_names()[0]
    small = _config(root, model, target_nonembedding=0.01, prune_kinds=["kv_group"])
    with pytest.raises(ForcePruneError, match="cannot be met"):
        run(small, progress=False)


def test_a_tokenizer_that_does_not_belong_to_the_model_is_refused(lm_files):
    from transformers import LlamaConfig, LlamaForCausalLM

    root, model = lm_files
    LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 intermediate_size=8, vocab_size=8)).save_pretrained(str(model))
    with pytest.raises(ForcePruneError, match="do not belong together"):
        load_causal_lm(model)


@pytest.mark.parametrize("force, kv, ffn", [("wanda-sp", [2, 1], [40, 60]), ("tp-group-norm", [2, 2], [50, 50])])
def test_one_shot_baselines_prune_the_pretrained_model_to_given_widths(lm_files, force, kv, ffn):
    """epochs = 0: the pretrained model is scored and pruned at once, then recovers (distilled);
    the saved model reloads to the same perplexity, and with one width per layer (Torch-Pruning's
    LLM recipe) its Hugging Face folder loads with from_pretrained alone."""
    from transformers import AutoModelForCausalLM

    from forceprune.integrations.transformers import load_pruned_pretrained
    from forceprune.runs import evaluate_run

    root, model = lm_files
    widths = {**{f"model.layers.{i}.self_attn": k for i, k in enumerate(kv)},
              **{f"model.layers.{i}.mlp.up_proj": k for i, k in enumerate(ffn)}}
    config = _config(root, model, force=force, epochs=0.0, widths=widths, prune_kinds=["kv_group", "neuron"],
                     force_options={}, distill={"alpha": 0.5, "temperature": 2.0})
    report = run(config, progress=False)
    assert [r["phase"] for r in report["history"]] == ["start", "finetune"], "no training before the pruning"
    assert report["kv_heads_after"] == kv and report["ffn_after"] == ffn
    assert report["query_heads_after"] == [3 * k for k in kv], "a key-value group goes with its 3 query heads"
    assert report["ppl_dense"] == pytest.approx(report["ppl_before_removal"]), "nothing trained before the cut"
    assert report["ppl_after_removal"] != pytest.approx(report["ppl_before_removal"]), "a one-shot cut is not lossless"
    assert evaluate_run(root / "run")["perplexity"] == pytest.approx(report["ppl_final"], rel=1e-9)

    folder = root / "run" / "model"
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    pruned = load_pruned_pretrained(folder)
    if kv[0] == kv[1] and ffn[0] == ffn[1]:
        plain = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        assert torch.equal(plain(ids).logits, pruned(ids).logits)
        assert plain.config.num_key_value_heads == kv[0] and plain.config.intermediate_size == ffn[0]
    else:
        assert pruned.model.layers[1].mlp.up_proj.out_features == ffn[1]
    with pytest.raises(ForcePruneError, match="must be in \\(0"):
        run(_config(root, model, epochs=0.0), progress=False)  # a force needs training


def test_llm_suite_harness_on_a_tiny_llama(lm_files, tmp_path):
    """The llm suite (ETP at a target, then Torch-Pruning's uniform recipe and Wanda-sp at its
    widths, the same recovery) on a tiny Llama, so it cannot rot."""
    from benchmarks.llm_suite import run_suite

    root, model = lm_files
    result = run_suite((0.7,), model=str(model), data_dir=str(root), train_tokens=1024, eval_tokens=256, epochs=2.0,
                       finetune_epochs=0.5, beta=0.5, lr=5e-3, threads=0, output_dir=tmp_path / "out",
                       work_dir=tmp_path / "work", progress=False,
                       config={"context": 16, "warmup_ratio": 0.0, "budget": {"every": 2}, "latency_repeats": 1,
                               "generate_tokens": 2})
    rows = {p["method"]: p for p in result["points"]}
    assert list(rows) == ["etp", "tp_group_norm", "wanda_sp"]
    assert rows["etp"]["removal_lossless_4_digits"] and rows["etp"]["max_output_error"] < 1e-5
    assert rows["etp"]["construction_s"] > 0 and rows["etp"]["step_overhead"] > -1
    assert rows["wanda_sp"]["kv_heads_after"] == rows["etp"]["kv_heads_after"]
    assert rows["wanda_sp"]["ffn_after"] == rows["etp"]["ffn_after"], "Wanda-sp is cut to ETP's per-layer widths"
    assert len(set(rows["tp_group_norm"]["ffn_after"])) == 1, "Torch-Pruning's LLM recipe: one width per layer"
    assert result["dense"]["ppl"] == pytest.approx(rows["etp"]["ppl_dense"]) and result["dense"]["ppl_out_of_domain"] > 0
    assert all(r["ppl_dense"] == pytest.approx(result["dense"]["ppl"]) for r in rows.values()), "one dense model"
    assert rows["etp"]["calibration_s"] > 0, "ETP ranks by activation: calibrated, and timed apart from construction"
    finetuned = result["dense"]["finetuned"]
    assert finetuned["ppl"] > 0 and finetuned["epochs"] == 2.5, "the dense reference trains ETP's force + recovery epochs"
    text = (tmp_path / "out" / "llm.md").read_text()
    assert "| 0.7 | wanda_sp |" in text and "without pruning" in text
    assert (tmp_path / "out" / "llm.png").stat().st_size > 0
