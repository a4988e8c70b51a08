"""The search space: one Optuna trial's choices -> one pipeline string ``mcir compile --passes`` accepts.

A pipeline has up to four stages, each optional, always in this order::

    prune(...)            structure, per layer: single weights (#csr/#nm) or whole neurons (smaller shapes)
    lowrank(energy=E)     truncated SVD of the linear layers
    finetune|distill(...) recovery on data= (after binarize/ternarize instead, whose signs need it most;
                          split in two halves around cluster: weights, then centroids, Deep Compression's recipe)
    storage, per layer:   quantize(bits=8,bits_for='L:4,...') | cluster(bits=B) | binarize/ternarize(skip=...)

Per-layer options are real options of real passes, so the string runs as it is: a stage meant
for some layers names the others in its ``skip`` (``prune(sparsity=0.8,skip='^(?:fc2|fc3)(?!\\S)')``
prunes fc1 only), and bits per layer go in ``quantize``'s ``bits_for``. A layer is named by its
first name (module path, else result name); ``^NAME(?!\\S)`` matches that name alone, both in
each of a layer's names (``skip``) and in their space-joined list (``bits_for``).

The space is narrowed by the per-layer sensitivity analysis (``mcir.analysis.sensitivity``):
with ``budget`` the accuracy drop allowed (``max_drop``), a layer whose drop under a technique
alone is at most ``budget`` is *robust* to it, up to ``FRAGILE x budget`` *sensitive*, beyond
that *fragile*; robust layers get the full range, sensitive ones a milder option, fragile ones
are left out of that technique (see ``LayerOptions.from_drops``). When the analysis had
training data, pruning is judged by its drop *after recovery* (``prune90ft``), because every
pruning pipeline of the space can fine-tune. Parameter names carry the layer's name
(``sparsity:fc1``), and the driver keeps the space in the study, so a resumed study asks the
same questions.

A search starts from a few principled points derived from the space (``seed_trials``): the
mildest uniform setting (int8 where allowed), the strongest bits the analysis allows per layer,
Deep Compression (each layer pruned as far as the analysis measured it robust, fine-tuned,
clustered at the 4 bits it measured, centroids fine-tuned), and each layer's largest neuron cut
with int8. The driver enqueues them (``optuna.Study.enqueue_trial``) before the sampler's own
trials, so the sampler starts from measured good regions rather than only from random draws.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

#: a sensitive layer's drop is at most this many times the budget; beyond it the layer is fragile
FRAGILE = 5.0
STORAGES = ("f32", "bits", "cluster", "binary")
PRUNE_KINDS = ("none", "weight", "neuron")
RECOVERY = ("none", "finetune", "distill")
EPOCHS = (5, 10, 20, 30)
SPARSITY_STEP = 0.05


@dataclass(frozen=True)
class LayerOptions:
    """What the search may do to one layer: the largest weight and neuron sparsity (0: left out), the
    weight bits it may take (16 = float), its binary forms, whether it may be clustered, and why."""

    name: str
    prune_max: float = 0.95
    neuron_max: float = 0.85
    bits: tuple[int, ...] = (16, 8, 4, 2)
    binary: tuple[str, ...] = ("float", "binary", "ternary")
    cluster: bool = True
    why: str = "not narrowed"

    @classmethod
    def from_drops(cls, name: str, drops: dict[str, float | None], budget: float, last: bool) -> LayerOptions:
        """Options for a layer from its accuracy drop (fraction) under each sensitivity technique alone.

        A technique that does not apply to the layer (drop None) counts as fragile.
        """

        def tier(technique: str) -> str:
            d = drops.get(technique)
            if d is None:
                return "fragile"
            return "robust" if d <= budget else "sensitive" if d <= FRAGILE * budget else "fragile"

        p50, p90 = tier("prune50"), tier("prune90")
        if "prune90ft" in drops:
            # measured with recovery, as the space's pruning pipelines can run: that tier decides
            # (90 % robust after fine-tuning makes 50 % robust too)
            p90 = tier("prune90ft")
            p50 = "robust" if p90 == "robust" else p50
        # weight pruning: 90 % costs little -> up to 95 %; costs some -> up to 90 %; else what 50 % allows
        prune_max = 0.95 if p90 == "robust" else 0.9 if p90 == "sensitive" else 0.7 if p50 != "fragile" else 0.0
        # neurons are a coarser cut than weights: a step milder than the same tier
        neuron_max = 0.0 if last else 0.85 if p90 == "robust" else 0.6 if p50 == "robust" else 0.3
        if p50 == "fragile":
            neuron_max = 0.0
        i8, i4, i2 = tier("int8"), tier("int4"), tier("int2")
        bits = (
            (16,)
            + ((8,) if i8 != "fragile" else ())
            + ((4,) if i4 != "fragile" else ())
            + ((2,) if i2 == "robust" else ())  # measured (not guessed from int4); the strongest width: robust only
        )
        b = tier("binarize")
        binary = ("float",) + (("binary",) if b == "robust" else ()) + (("ternary",) if b != "fragile" else ())
        cluster = tier("cluster4") != "fragile"
        measured = ("prune50", "prune90", "prune90ft", "int8", "int4", "int2", "cluster4", "binarize")
        why = ", ".join(f"{t} {tier(t)}" for t in measured if t in drops)
        return cls(name, prune_max, neuron_max, bits, binary, cluster, why)


@dataclass(frozen=True)
class Space:
    """The per-layer options of every layer the search may touch, in program order."""

    layers: tuple[LayerOptions, ...]

    @classmethod
    def unnarrowed(cls, names: list[str]) -> Space:
        """Every option for every layer (no sensitivity analysis); the last layer keeps its neurons (the outputs)."""
        return cls(tuple(LayerOptions(n, neuron_max=0.0 if i == len(names) - 1 else 0.85) for i, n in enumerate(names)))

    @classmethod
    def from_sensitivity(cls, sensitivity: Any, budget: float) -> Space:
        """Narrowed by ``mcir.analysis.sensitivity.layer_sensitivity``'s result (with accuracy), see the module doc."""
        base = sensitivity.accuracy
        layers = []
        for i, row in enumerate(sensitivity.rows):
            drops = {t: None if c is None or c.accuracy is None else base - c.accuracy for t, c in row.cells.items()}
            layers.append(LayerOptions.from_drops(row.layer, drops, budget, last=i == len(sensitivity.rows) - 1))
        return cls(tuple(layers))

    def to_json(self) -> list[dict[str, Any]]:
        """Plain data, for the study's user attributes and search.json."""
        return [{**asdict(o), "bits": list(o.bits), "binary": list(o.binary)} for o in self.layers]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> Space:
        """The inverse of ``to_json``."""
        return cls(tuple(LayerOptions(**{**r, "bits": tuple(r["bits"]), "binary": tuple(r["binary"])}) for r in rows))

    @property
    def names(self) -> list[str]:
        """The layers' names, in program order."""
        return [o.name for o in self.layers]

    def table(self) -> str:
        """One line per layer: its options and the sensitivity tiers behind them."""
        return "\n".join(
            f"  {o.name}: prune <= {o.prune_max:g}, neurons <= {o.neuron_max:g}, bits {list(o.bits)}, "
            f"{'/'.join(o.binary)}, cluster {'yes' if o.cluster else 'no'}  ({o.why})"
            for o in self.layers
        )


def name_regex(names: list[str]) -> str:
    """A regex matching exactly these layer names (as a whole name, or the first of a space-joined list)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + r")(?!\S)"


def skip_all_but(space: Space, chosen: list[str]) -> str:
    """A ``skip`` value that leaves alone every layer of ``space`` except ``chosen``."""
    others = [n for n in space.names if n not in chosen]
    return f"'{name_regex(others)}'" if others else "none"


def _per_layer_stages(space: Space, values: dict[str, float], text: str) -> list[str]:
    """One stage per distinct non-zero value, applied to the layers that chose it (``text`` has {value}, {skip})."""
    stages = []
    for value in sorted({v for v in values.values() if v > 0}):
        chosen = [n for n, v in values.items() if v == value]
        stages.append(text.format(value=f"{value:g}", skip=skip_all_but(space, chosen)))
    return stages


def _sparsity(trial: Any, key: str, high: float) -> float:
    return round(trial.suggest_float(key, 0.0, high, step=SPARSITY_STEP), 2)


def suggest_pipeline(trial: Any, space: Space, *, train: bool = True) -> str:
    """Ask ``trial`` (an ``optuna.Trial``) for every choice within ``space`` and return the pipeline string.

    ``train=False`` (no training data) leaves out finetune and distill.
    """
    stages: list[str] = []
    prune = trial.suggest_categorical("prune", PRUNE_KINDS)
    if prune == "weight":
        values = {o.name: _sparsity(trial, f"sparsity:{o.name}", o.prune_max) for o in space.layers if o.prune_max}
        stages += _per_layer_stages(space, values, "prune(sparsity={value},skip={skip})")
    elif prune == "neuron":
        values = {o.name: _sparsity(trial, f"neurons:{o.name}", o.neuron_max) for o in space.layers if o.neuron_max}
        stages += _per_layer_stages(space, values, "prune(granularity=neuron,sparsity={value},skip={skip})")
    if trial.suggest_categorical("lowrank", (False, True)):
        stages.append(f"lowrank(energy={trial.suggest_float('lowrank_energy', 0.6, 0.98, step=0.02):g})")
    recovery = trial.suggest_categorical("recovery", RECOVERY) if train else "none"
    epochs = trial.suggest_categorical("epochs", EPOCHS) if recovery != "none" else 0
    recover = f"{recovery}(epochs={epochs})" if recovery != "none" else ""
    storage = trial.suggest_categorical("storage", STORAGES)
    binary_stages: list[str] = []
    if storage == "binary":
        forms = {o.name: _choice(trial, f"binary:{o.name}", o.binary) for o in space.layers}
        for form, text in (
            ("binary", "binarize(activations=binary,skip={skip})"),
            ("ternary", "ternarize(skip={skip})"),
        ):
            chosen = [n for n, f in forms.items() if f == form]
            if chosen:
                binary_stages.append(text.format(skip=skip_all_but(space, chosen)))
    if recover and storage == "cluster":
        # Deep Compression: retrain the weights before clustering, then the shared centroids after it
        first = (epochs + 1) // 2
        stages.append(f"{recovery}(epochs={first})")
    elif recover and not binary_stages:
        stages.append(recover)
    if storage == "bits":
        bits = {o.name: _choice(trial, f"bits:{o.name}", o.bits) for o in space.layers}
        stages += _bits_stage(bits)
    elif storage == "cluster":
        width = trial.suggest_int("cluster_bits", 2, 6)
        kept = [o.name for o in space.layers if not o.cluster]
        stages.append(f"cluster(bits={width},skip='{name_regex(kept)}')" if kept else f"cluster(bits={width})")
        if recover:
            stages.append(f"{recovery}(epochs={epochs - (epochs + 1) // 2})")
    stages += binary_stages
    if recover and binary_stages:
        stages.append(recover)
    return ",".join(stages) or "fold"


def _choice(trial: Any, key: str, choices: tuple[Any, ...]) -> Any:
    """A categorical per-layer choice; a layer with one choice asks nothing (the space stays smaller)."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(key, choices)


def _bits_stage(bits: dict[str, int]) -> list[str]:
    """``quantize`` with the most common width as ``bits`` and the others in ``bits_for``; nothing if all float."""
    if all(b == 16 for b in bits.values()):
        return []
    common = Counter(b for b in bits.values() if b != 16).most_common(1)[0][0]
    rules = ",".join(f"{name_regex([n])}:{b}" for n, b in bits.items() if b != common)
    return [f"quantize(bits={common},bits_for='{rules}')" if rules else f"quantize(bits={common})"]


#: the sparsity the sensitivity analysis measures (prune90/prune90ft): a seed prunes no further than measured
MEASURED_SPARSITY = 0.9


def seed_trials(space: Space, *, train: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """Starting points derived from the narrowed space, as (name, Optuna params) for ``enqueue_trial``.

    Each gives every question its trial will ask (so the pipeline is fully determined), only values the
    space offers, and is left out when the space cannot express it (e.g. no layer may be pruned):

    - ``mildest``: int8 on every layer that allows it, nothing else: the safe end of the space.
    - ``strongest-bits``: each layer at the fewest bits the analysis allows, then fine-tuned.
    - ``deep-compression``: each layer weight-pruned as far as measured robust (at most 90 %),
      fine-tuned, clustered at 4 bits (the width ``cluster4`` measured), centroids fine-tuned.
    - ``neurons-int8``: each layer's largest neuron cut, fine-tuned, int8: the fewest MACs the space allows.

    Without training data (``train=False``) the recovery questions are not asked and not given.
    """
    recovery = {"recovery": "finetune", "epochs": 20} if train else {}
    asked = [o for o in space.layers if len(o.bits) > 1]
    seeds: list[tuple[str, dict[str, Any]]] = []

    def uniform(pick: Any) -> dict[str, Any]:
        return {f"bits:{o.name}": pick(o.bits) for o in asked}

    base = {"prune": "none", "lowrank": False}
    if any(8 in o.bits for o in asked):
        mild = uniform(lambda b: 8 if 8 in b else 16)
        seeds.append(("mildest", {**base, **({"recovery": "none"} if train else {}), "storage": "bits", **mild}))
    if asked:
        seeds.append(("strongest-bits", {**base, **recovery, "storage": "bits", **uniform(min)}))
    pruned = {f"sparsity:{o.name}": round(min(o.prune_max, MEASURED_SPARSITY), 2) for o in space.layers if o.prune_max}
    if pruned and any(o.cluster for o in space.layers):
        seeds.append(
            (
                "deep-compression",
                {"prune": "weight", **pruned, "lowrank": False, **recovery, "storage": "cluster", "cluster_bits": 4},
            )
        )
    cut = {f"neurons:{o.name}": round(o.neuron_max, 2) for o in space.layers if o.neuron_max}
    if cut:
        mild = uniform(lambda b: 8 if 8 in b else 16)
        seeds.append(
            ("neurons-int8", {"prune": "neuron", **cut, "lowrank": False, **recovery, "storage": "bits", **mild})
        )
    return seeds
