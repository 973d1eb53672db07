"""Text classification with forceprune: SST-2/TREC readers, tokenisation with length-grouped
batches, MiniLM loading (offline) and a fine-tuning loop, and :func:`run_sst2`.

``transformers`` is imported only when a model is loaded.
"""
from .batching import TextBatches, collate, encode_texts, length_grouped_batches
from .data import TextFormatError, read_labelled_tsv, read_sst2, read_trec
from .finetune import evaluate, train_classifier
from .model import load_text_classifier, resolve_model_path
from .run import TASK, TextRunConfig, make_config, run_sst2, run_text_classification

__all__ = [
    "TASK", "TextBatches", "TextFormatError", "TextRunConfig", "collate", "encode_texts", "evaluate",
    "length_grouped_batches", "load_text_classifier", "make_config", "read_labelled_tsv", "read_sst2",
    "read_trec", "resolve_model_path", "run_sst2", "run_text_classification", "train_classifier",
]
