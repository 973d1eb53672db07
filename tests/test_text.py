"""Text classification: readers, batching, and runs through the pipeline end to end (tiny)."""
import json
from pathlib import Path

import pytest
import torch

from forceprune.data.errors import DatasetNotFoundError
from forceprune.errors import ForcePruneError
from forceprune.runs import config_from_dict, run
from forceprune.text import (
    TextBatches, TextFormatError, collate, length_grouped_batches, read_labelled_tsv, read_sst2, read_trec,
    resolve_model_path,
)


WORDS = "good bad great awful movie film plot fun dull the a is was and not very".split()


def _write_sst2(root: Path, header="text\tlabel", n_train=48, n_dev=16):
    g = torch.Generator().manual_seed(0)
    (root / "sst2" / "glue").mkdir(parents=True)
    (root / "sst2" / "senteval").mkdir(parents=True)

    def rows(n):
        out = []
        for _ in range(n):
            k = int(torch.randint(2, 9, (1,), generator=g))
            words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)]
            label = int(("good" in words or "great" in words or "fun" in words) and "not" not in words)
            out.append(f"{' '.join(words)} \t{label}")
        return out

    (root / "sst2/glue/train.tsv").write_text("\n".join([header] + rows(n_train)) + "\n")
    (root / "sst2/glue/dev.tsv").write_text("\n".join([header] + rows(n_dev)) + "\n")
    (root / "sst2/senteval/sentiment-test").write_text("\n".join(rows(n_dev)) + "\n")


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("header", ["text\tlabel", "sentence\tlabel", "label\tsentence"])
def test_sst2_reader_accepts_either_text_column_name(tmp_path, header):
    _write_sst2(tmp_path, "text\tlabel")
    if header != "text\tlabel":
        lines = (tmp_path / "sst2/glue/dev.tsv").read_text().splitlines()[1:]
        if header.startswith("label"):
            lines = ["\t".join(reversed(line.split("\t"))) for line in lines]
        (tmp_path / "sst2/glue/dev.tsv").write_text("\n".join([header] + lines) + "\n")
    texts, labels = read_sst2("dev", tmp_path)
    assert len(texts) == len(labels) == 16
    assert set(labels) <= {0, 1} and all(t and not t.endswith(" ") for t in texts)
    t2, y2 = read_sst2("test", tmp_path)  # header-less SentEval file
    assert len(t2) == 16


def test_dataset_file_with_wrong_columns_says_what_it_expects(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("review\tstars\nnice film\t1\n")
    with pytest.raises(TextFormatError, match=r"columns \['review', 'stars'\].*'sentence' or 'text'.*'label'"):
        read_labelled_tsv(bad)
    bad.write_text("sentence\tlabel\nnice film\tpositive\n")
    with pytest.raises(TextFormatError, match="not an integer"):
        read_labelled_tsv(bad)


def test_missing_dataset_and_bad_split(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="FORCEPRUNE_DATA"):
        read_sst2("train", tmp_path)
    with pytest.raises(ForcePruneError, match="choose 'train', 'dev' or 'test'"):
        read_sst2("validaton", tmp_path)


def test_trec_reader(tmp_path):
    (tmp_path / "trec").mkdir()
    (tmp_path / "trec/train_5500.label").write_bytes(
        b"DESC:manner How did serfdom develop ?\nHUM:ind Who was sister\xf0city ?\nNUM:date When ?\n"
    )
    (tmp_path / "trec/TREC_10.label").write_text("NUM:date When was it ?\nHUM:ind Who is he ?\n")
    texts, labels, names = read_trec("train", tmp_path)
    assert names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"] and labels == [1, 3, 5]
    _, fine_labels, fine_names = read_trec("test", tmp_path, fine=True)
    assert fine_names == ["DESC:manner", "HUM:ind", "NUM:date"] and fine_labels == [2, 1]


def test_real_sst2_and_trec_counts(data_dir):
    if not (Path(data_dir) / "sst2").is_dir():
        pytest.skip(f"no sst2/ under {data_dir}")
    assert [len(read_sst2(s, data_dir)[0]) for s in ("train", "dev", "test")] == [67349, 872, 1821]
    assert sum(read_sst2("dev", data_dir)[1]) == 444
    if (Path(data_dir) / "trec").is_dir():
        assert [len(read_trec(s, data_dir)[0]) for s in ("train", "test")] == [5452, 500]


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------
def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,), generator=g).tolist()
    batches = length_grouped_batches(lengths, 32, shuffle=True, seed=1, group_factor=8)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert batches == length_grouped_batches(lengths, 32, shuffle=True, seed=1, group_factor=8)
    assert batches != length_grouped_batches(lengths, 32, shuffle=True, seed=2, group_factor=8)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches would spread over ~50 tokens
    evals = length_grouped_batches(lengths, 100, shuffle=False)
    assert [lengths[i] for b in evals for i in b] == sorted(lengths)


def test_collate_pads_and_masks():
    batch = collate([[101, 7, 102], [101, 102]], [1, 0], pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    data = TextBatches([[1, 2], [1, 2, 3, 4], [5]], [0, 1, 0], 2, shuffle=True)
    assert sum(len(b["labels"]) for b in data) == 3 and len(data) == 2
    with pytest.raises(ForcePruneError):
        TextBatches([[1]], [0, 1], 2)


# ------------------------------------------------------------------------------------------------
# models and end to end
# ------------------------------------------------------------------------------------------------
def _tiny_model_dir(tmp_path: Path) -> Path:
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64, num_labels=2)
    out = tmp_path / "tiny_bert"
    BertForSequenceClassification(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_missing_model_path_and_bad_config(tmp_path):
    with pytest.raises(ForcePruneError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForcePruneError, match="no config.json"):
        resolve_model_path(tmp_path / "empty")
    with pytest.raises(ForcePruneError, match=r"unknown config key 'epoch': did you mean 'epochs'\?"):
        text_config({"epoch": 2})
    with pytest.raises(ForcePruneError, match="dataset = 'imdb' is not allowed: choose one of 'sst2', 'trec'"):
        text_config({"dataset": "imdb"})


def text_config(data: dict):
    return config_from_dict({"task": "text_classification", **data})


def run_text(data: dict, out: Path) -> dict:
    """One text-classification run through the run pipeline, quietly."""
    return run(text_config({**data, "output_dir": str(out)}), progress=False)


def _tiny_etp_run(tmp_path: Path, **overrides) -> dict:
    """An ETP run config on a tiny SST-2 copy and a tiny BERT, both written under ``tmp_path``."""
    _write_sst2(tmp_path)
    cfg = {
        "model": str(_tiny_model_dir(tmp_path)), "data_dir": str(tmp_path), "force": "etp", "lr": 2e-2, "epochs": 4,
        "batch_size": 8, "warmup_ratio": 0.0, "macs_seq_len": 16, "latency_batch": 2, "latency_repeats": 1,
        "force_options": {"beta": 0.05, "pivot": "ranked"}, "log_every": 100,
    }
    return {**cfg, **overrides}


def test_run_sst2_end_to_end_on_a_tiny_model(tmp_path):
    cfg = _tiny_etp_run(tmp_path, finetune_epochs=1, save_model=True)
    report = run_text(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["acc_final"] == report["acc_final"] and 0 <= report["acc_final"] <= 100 and report["acc_test"] is not None
    assert report["eval_split"] == "dev" and report["extra_splits"] == ["test"]
    assert (report["train_samples"], report["dev_samples"], report["test_samples"]) == (48, 16, 16)
    assert report["heads_before"] == [4, 4] and report["ffn_before"] == [37, 37]
    assert report["encoder_macs_after"] <= report["encoder_macs_before"] and report["macs_after"] <= report["macs_before"]
    steps = {r["phase"]: r["steps"] for r in report["history"]}
    assert steps == {"force": 24, "finetune": 6}
    assert set(report["unit_kinds"].values()) == {"head", "neuron"}  # the pooler is not pruned by default
    assert sum(report["heads_after"]) + sum(report["ffn_after"]) < 2 * 4 + 2 * 37
    assert report["max_output_error"] < 1e-5
    assert report["acc_after_removal"] == report["acc_before_removal"], "lossless removal: same dev accuracy"
    from forceprune.integrations.transformers import load_pruned_pretrained

    reloaded = load_pruned_pretrained(tmp_path / "run" / "model")
    from forceprune.attention import heads_per_layer

    assert list(heads_per_layer(reloaded).values()) == report["heads_after"]
    from forceprune.cli import main

    assert main(["eval", str(tmp_path / "run")]) == 0, "the plan-format pruned model reloads and evaluates"


def test_run_sst2_reaches_a_macs_target_with_the_proximal_force(tmp_path):
    cfg = _tiny_etp_run(tmp_path, target_macs=0.5, budget={"every": 2}, eval_test=False)
    report = run_text(cfg, tmp_path / "run")
    assert report["budget"]["target"] == 0.5 and report["budget"]["total_steps"] == 24
    assert report["macs_after"] / report["macs_before"] == pytest.approx(0.5, rel=0.03)
    assert report["max_output_error"] < 1e-4


def test_text_targets_need_a_force_and_exclude_widths():
    with pytest.raises(ForcePruneError, match="target_macs needs a force"):
        text_config({"force": "none", "target_macs": 0.5})
    with pytest.raises(ForcePruneError, match="either target_macs or widths"):
        text_config({"target_macs": 0.5, "widths": {"a": 1}})


@pytest.mark.parametrize("data", [{}, {"target_macs": 0.5}, {"target_macs": 0.5, "spare_keepers": True, "force": "none"}])
def test_fisher_importance_needs_a_force_a_macs_target_and_spare_keepers(data):
    with pytest.raises(ForcePruneError, match='importance = "fisher" .* spare_keepers = true'):
        text_config({"importance": "fisher", **data})
    if data.get("force") is None and data:
        text_config({"importance": "fisher", "spare_keepers": True, **data})  # complete: accepted


def test_sst2_benchmark_suite_in_miniature(tmp_path):
    """The sst2 suite's harness (a dense teacher per seed that every method starts from, ETP at a
    target, torque and group norm cut to ETP's widths, the Fisher search at the same target, all
    distilled) on a tiny model, so it cannot rot."""
    from benchmarks.sst2_suite import run_suite

    _write_sst2(tmp_path)
    model_dir = _tiny_model_dir(tmp_path)
    result = run_suite(
        (0.5,), model=str(model_dir), data_dir=str(tmp_path), seeds=(0,), extra_seeds=(1,), dense_epochs=1.0, epochs=4,
        finetune_epochs=0.5, beta=0.05, lr=2e-2, threads=0, workers=1, output_dir=tmp_path / "out",
        work_dir=tmp_path / "work", progress=False,
        config={"batch_size": 8, "warmup_ratio": 0.0, "macs_seq_len": 16, "latency_batch": 2, "latency_repeats": 1},
    )
    rows = {(p["method"], p["seed"]): p for p in result["points"]}
    assert set(rows) == {("dense", 0), ("dense", 1), ("etp", 0), ("etp", 1), ("etp_fisher", 0), ("etp_fisher", 1),
                         ("torque", 0), ("group_norm", 0), ("fisher", 0), ("fisher", 1)}
    assert rows[("etp", 0)]["reached_vs_target"] == pytest.approx(1.0, abs=0.03)
    assert rows[("etp", 0)]["acc_dense_teacher"] == rows[("dense", 0)]["acc_dense_teacher"], "every method starts from the teacher"
    assert (rows[("torque", 0)]["encoder_macs_after"] == rows[("etp", 0)]["encoder_macs_after"]
            == rows[("group_norm", 0)]["encoder_macs_after"])
    assert rows[("fisher", 0)]["macs_after"] <= 0.5 * rows[("fisher", 0)]["macs_before"]
    assert rows[("etp", 0)]["max_output_error"] < 1e-4
    etp = next(r for r in result["summary"] if r["method"] == "etp")
    assert etp["seeds"] == [0, 1] and etp["acc_dev_std"] is not None
    assert (tmp_path / "out" / "sst2.png").stat().st_size > 0
    assert "| 0.5 | etp | 0,1 |" in (tmp_path / "out" / "sst2.md").read_text()
    planned = rows[("etp_fisher", 0)]  # the force on the units the Fisher search chose: removal still exact
    assert planned["max_output_error"] < 1e-4 and planned["reached_vs_target"] == pytest.approx(1.0, abs=0.03)
    assert planned["acc_dev_after_removal"] == planned["acc_dev_before_removal"]

    report = tmp_path / "work" / "etp_fisher_0.5_seed0" / "report.json"
    stamp = report.stat().st_mtime_ns
    again = run_suite(  # a stopped suite resumed with fewer methods: every finished run is read back
        (0.5,), ("dense", "etp_fisher"), model=str(model_dir), data_dir=str(tmp_path), seeds=(0,), extra_seeds=(),
        dense_epochs=1.0, epochs=4, finetune_epochs=0.5, beta=0.05, lr=2e-2, threads=0, workers=1,
        output_dir=tmp_path / "out2", work_dir=tmp_path / "work", resume=True, progress=False,
        config={"batch_size": 8, "warmup_ratio": 0.0, "macs_seq_len": 16, "latency_batch": 2, "latency_repeats": 1},
    )
    assert [(p["method"], p["seed"]) for p in again["points"]] == [("dense", 0), ("etp_fisher", 0)]
    assert again["points"] == [rows[("dense", 0)], planned] and report.stat().st_mtime_ns == stamp, "not retrained"


def test_dense_run(tmp_path):
    _write_sst2(tmp_path)
    model_dir = _tiny_model_dir(tmp_path)
    report = run_text({"model": str(model_dir), "data_dir": str(tmp_path), "force": "none", "epochs": 1,
                       "batch_size": 16, "macs_seq_len": 16, "latency_batch": 2, "latency_repeats": 1,
                       "eval_test": False}, tmp_path / "dense")
    assert report["macs_after"] == report["macs_before"] and "acc_test" not in report
    assert report["max_output_error"] is None and report["layers"] == [] and report["pruned_model"] is None


def test_proximal_step_is_group_soft_thresholding():
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification

    import forceprune as fp

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                     max_position_embeddings=32)
    model = BertForSequenceClassification(cfg).eval()
    pruner = fp.ForcePruner(model, {"input_ids": torch.randint(0, 50, (1, 6))}, "etp", beta=1.0, pivot="ranked")
    us = next(u for u in pruner.unit_sets if u.kind == "head")
    before = us.unit_sums("all", 2).sqrt().detach()
    phi = pruner.force.profile(us.size, before)
    lr = 0.5 * float((before / (phi * us.numel("all").sqrt())).median())  # kills some heads, shrinks the others
    pruner.proximal_step(lr)
    after = us.unit_sums("all", 2).sqrt().detach()
    expected = (before - lr * phi * us.numel("all").sqrt()).clamp_min(0)
    assert torch.allclose(after, expected, atol=1e-5)
    assert 0 < int((after == 0).sum()) < us.size  # exact zeros, ready for capture
    assert pruner.capture() >= int((after == 0).sum())


def test_cli_run_dispatches_text_configs(tmp_path, capsys):
    """`forceprune run` on a text_classification config goes through the same pipeline and
    prints the same summary as a vision run."""
    from forceprune.cli import main

    _write_sst2(tmp_path)
    model_dir = _tiny_model_dir(tmp_path)
    config = tmp_path / "tiny_sst2.toml"
    config.write_text(
        'task = "text_classification"\n'
        f'model = "{model_dir}"\ndataset = "sst2"\nforce = "etp"\nepochs = 1.0\nbatch_size = 16\n'
        'macs_seq_len = 16\nlatency_batch = 2\nlatency_repeats = 1\n'
        '[force_options]\nbeta = 0.05\npivot = "ranked"\n'
    )
    out = tmp_path / "run"
    args = ["run", str(config), "--data-dir", str(tmp_path), "--output-dir", str(out), "--set", "finetune_epochs=0.0"]
    assert main([*args, "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["heads_before"] == [4, 4] and report["config"]["finetune_epochs"] == 0.0
    printed = capsys.readouterr().out
    assert f"{report['acc_final']:.2f} %" in printed and "Accuracy: final (dev)" in printed and "null" not in printed
    assert main(args) == 2, "a second run into the same directory is refused"
    assert "already holds a run" in capsys.readouterr().err


def test_a_text_run_distils_logits_and_hidden_states_from_its_dense_fine_tune(tmp_path):
    cfg = _tiny_etp_run(tmp_path, epochs=2, dense_epochs=2, finetune_epochs=1, init_from_dense=True, eval_test=False,
                        distill={"alpha": 0.5, "temperature": 2.0, "hidden": 1.0})
    report = run_text(cfg, tmp_path / "run")
    assert [r["phase"] for r in report["history"]] == ["dense", "dense", "force", "force", "finetune"]
    assert report["max_output_error"] < 1e-5 and report["acc_after_removal"] == report["acc_before_removal"]
    assert report["config"]["distill"]["hidden"] == 1.0
