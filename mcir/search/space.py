"""The search space: one Optuna trial's choices -> one pipeline string ``mcir compile --passes`` accepts.

A pipeline has up to four stages, each optional, always in this order::

    prune(...)            structure: single weights (#csr/#nm) or whole neurons (smaller shapes)
    lowrank(energy=E)     truncated SVD of the linear layers
    finetune|distill(...) recovery on data= (after binarize instead, whose signs need it most)
    quant8 | quantize(bits=4) | cluster(bits=B) | binarize(activations=binary)   weight storage

Per-layer structure comes from each pass's ``skip=`` (which layers a stage leaves alone:
``none``/``first``/``last``/``ends``), chosen per stage. Parameter names are stable: a resumed
study sees the same space, and ``mcir search`` never renames them between versions.
"""

from __future__ import annotations

from typing import Any

#: (what the stage stores, pass text with {placeholders}); the chosen name is an Optuna categorical.
WEIGHT_STORAGES = ("f32", "quant8", "int4", "cluster", "binarize")
PRUNE_KINDS = ("none", "weight", "neuron")
RECOVERY = ("none", "finetune", "distill")
EPOCHS = (5, 10, 20, 30)


def suggest_pipeline(trial: Any, *, train: bool = True) -> str:
    """Ask ``trial`` (an ``optuna.Trial``) for every choice and return the pipeline string.

    ``train=False`` (no training data) leaves out finetune and distill.
    """
    stages: list[str] = []
    prune = trial.suggest_categorical("prune", PRUNE_KINDS)
    if prune == "weight":
        sparsity = trial.suggest_float("prune_sparsity", 0.5, 0.97, step=0.01)
        skip = trial.suggest_categorical("prune_skip", ("last", "none"))
        stages.append(f"prune(sparsity={sparsity:g},skip={skip})")
    elif prune == "neuron":
        sparsity = trial.suggest_float("neuron_sparsity", 0.2, 0.85, step=0.05)
        stages.append(f"prune(granularity=neuron,sparsity={sparsity:g})")
    if trial.suggest_categorical("lowrank", (False, True)):
        stages.append(f"lowrank(energy={trial.suggest_float('lowrank_energy', 0.6, 0.98, step=0.02):g})")
    recovery = trial.suggest_categorical("recovery", RECOVERY) if train else "none"
    recover = ""
    if recovery != "none":
        recover = f"{recovery}(epochs={trial.suggest_categorical('epochs', EPOCHS)})"
    storage = trial.suggest_categorical("weights", WEIGHT_STORAGES)
    if recover and storage != "binarize":
        stages.append(recover)
    if storage == "quant8":
        stages.append("quant8")
    elif storage == "int4":
        stages.append("quantize(bits=4)")
    elif storage == "cluster":
        stages.append(f"cluster(bits={trial.suggest_int('cluster_bits', 2, 6)})")
    elif storage == "binarize":
        skip = trial.suggest_categorical("binarize_skip", ("ends", "first"))
        stages.append(f"binarize(activations=binary,skip={skip})")
        if recover:
            stages.append(recover)
    return ",".join(stages) or "fold"
