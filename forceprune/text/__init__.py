"""Text classification data and models: SST-2/TREC readers, tokenisation with length-grouped
batches, and offline loading of pretrained encoders (MiniLM-L6 by default). Runs on them are
:mod:`forceprune.runs.text`.

``transformers`` is imported only when a model or tokenizer is loaded.
"""
from .batching import TextBatches, collate, encode_texts, length_grouped_batches
from .data import TextFormatError, load_splits, read_labelled_tsv, read_sst2, read_trec
from .model import load_text_classifier, load_tokenizer, resolve_model_path

__all__ = [
    "TextBatches", "TextFormatError", "collate", "encode_texts", "length_grouped_batches", "load_splits",
    "load_text_classifier", "load_tokenizer", "read_labelled_tsv", "read_sst2", "read_trec", "resolve_model_path",
]
