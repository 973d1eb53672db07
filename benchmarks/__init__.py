"""forceprune's benchmark suites: every method, the same budget, side by side.

They live outside the importable package, as timm's, torchao's and PEFT's do. Run one with
``forceprune bench SUITE`` (from a source checkout) or ``python -m benchmarks SUITE``:

* :mod:`benchmarks.vision`: ``quick``, ``headline``, ``fmnist``, ``cifar``, ``beta_sweep``,
  ``smoke``, and for a GPU ``cifar_resnet56``, ``cifar_vgg19``;
* :mod:`benchmarks.sst2_suite`: ``sst2`` (MiniLM-L6 / SST-2, an accuracy/MACs curve);
* ``benchmarks/force_readings.py``: which reading of the inverse-square laws zeroes a tail.

Each writes ``<suite>.json``, ``<suite>.md`` and ``<suite>.png`` under ``benchmarks/results``.
"""
