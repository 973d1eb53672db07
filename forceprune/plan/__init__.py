"""Portable pruning plans: save a pruned model, rebuild it anywhere, bit for bit.

A pruned model's *shapes* differ from its architecture's, so its ``state_dict`` cannot be
loaded into a freshly built model. A **plan** records how to get from the base (unpruned)
architecture to the pruned shapes: which units each removal round kept, per unit set. Loading
builds the base model (from the model registry or a user factory), replays the plan through
forceprune's own unit sets (so attention-head callbacks that fix ``num_heads`` & co. run
too), recreates biases that removal created by folding, then loads the weights::

    plan = fp.plan.make_plan(pruner, model_name="resnet20", model_kwargs={"num_classes": 10})
    fp.plan.save_pruned(model, plan, "runs/pruned")         # atomic; refuses to overwrite
    model, plan = fp.plan.load_pruned("runs/pruned")         # registry models
    model, plan = fp.plan.load_pruned("runs/pruned", model_factory=MyNet)   # custom models

One job per module:

* :mod:`.schema` -- the errors, the JSON layout, building (:func:`make_plan`,
  :func:`plan_from_rounds`) and checking (:func:`validate_plan`) a plan;
* :mod:`.replay` -- pruning a base model to a plan's shapes and loading weights into it;
* :mod:`.store` -- the saved directory (``plan.json`` + ``model.safetensors``), written
  atomically, and :func:`safe_torch_load`.
"""
from .replay import ensure_biases, load_weights, replay_plan, replay_rounds
from .schema import (
    PLAN_FILE,
    PLAN_FORMAT,
    PLAN_FORMAT_VERSION,
    WEIGHTS_FILE,
    CorruptWeightsError,
    ModelMismatchError,
    OutputExistsError,
    PlanError,
    SaveError,
    UnsafeCheckpointError,
    decode_inputs,
    encode_inputs,
    identify_model,
    library_versions,
    make_plan,
    plan_from_rounds,
    rounds_from_history,
    validate_plan,
)
from .store import load_pruned, read_plan, safe_torch_load, save_pruned

__all__ = [
    "PLAN_FORMAT",
    "PLAN_FORMAT_VERSION",
    "PLAN_FILE",
    "WEIGHTS_FILE",
    "PlanError",
    "CorruptWeightsError",
    "ModelMismatchError",
    "OutputExistsError",
    "SaveError",
    "UnsafeCheckpointError",
    "make_plan",
    "plan_from_rounds",
    "rounds_from_history",
    "identify_model",
    "library_versions",
    "save_pruned",
    "load_pruned",
    "read_plan",
    "validate_plan",
    "replay_plan",
    "replay_rounds",
    "ensure_biases",
    "load_weights",
    "encode_inputs",
    "decode_inputs",
    "safe_torch_load",
]
