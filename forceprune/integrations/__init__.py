"""Integrations with training frameworks. Each lives in its own sub-module and imports its
framework only when that sub-module is imported:

* ``forceprune.integrations.transformers``: ``ForcePruneCallback`` for ``transformers.Trainer``,
  ``load_pruned`` to rebuild a saved pruned Hugging Face model.
"""
