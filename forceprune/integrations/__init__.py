"""Integrations with training frameworks. Each lives in its own sub-module and imports its
framework only when that sub-module is imported:

* ``forceprune.integrations.transformers``: ``ForcePruneCallback`` for ``transformers.Trainer``
  (and ``ForcePruneLossMixin``), plus the Hugging Face save format of a pruned model:
  ``record_pruning`` / ``save_pruned_pretrained`` write the kept heads and FFN widths into
  ``config.forceprune``, ``load_pruned_pretrained`` rebuilds the model from a
  ``save_pretrained`` folder;
* ``forceprune.integrations.lightning``: ``ForcePruneCallback`` for Lightning's ``Trainer.fit``
  (penalty gradient, capture, removal at an epoch or at the end, DDP, resuming from pruned
  checkpoints).

Plain PyTorch models are saved with :func:`forceprune.plan.save_pruned` instead.
"""
