"""Random small torch models, differentially through mcir (issue #17).

``random_model(seed)`` draws a network from a seeded generator: an image net (conv, batch norm,
activations, max/avg pooling, residual adds, channel concats of two branches, then adaptive pooling
or a flatten) or a vector net (linear, layer norm, activations, residual adds, concats, a reshape
round trip), ending in a linear head. ``check_model`` runs it through

    trace -> interpreter vs torch -> fold (vs the traced graph) -> compile (native vs interpreter)
          -> fold,quant8 with calibration -> compile (native vs interpreter, every u8 activation)

with the tolerances in ``TOL``. Every failure is a ``McirError`` naming the stage (a clean refusal,
reported as such) or a bug: any other exception, or numbers outside the tolerances.
"""

from __future__ import annotations

import random
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mcir
from mcir.errors import McirError

#: relative to the largest |reference| (at least 1): f32 paths agree to float rounding; the int8 output
#: within the quantised-model bar of tests/codegen/test_int8_models.py; u8 activations within 1 LSB
TOL = {"torch": 1e-4, "fold": 1e-4, "native f32": 1e-4, "native int8": 1e-3, "u8 LSB": 1}

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
    nn.Identity,
)  # fmt: skip


class RandomNet(nn.Module):
    """A model given as a program: ``steps`` of (kind, module names, argument slots); slot 0 is the input."""

    def __init__(self, steps: list[tuple[str, list[str], list[int]]], mods: dict[str, nn.Module]) -> None:
        super().__init__()
        self.steps = steps
        self.mods = nn.ModuleDict(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals = [x]
        for kind, names, args in self.steps:
            a = [vals[i] for i in args]
            if kind == "module":
                y = self.mods[names[0]](a[0])
            elif kind == "add":
                y = a[0] + a[1]
            elif kind == "cat":
                y = torch.cat(a, dim=1)
            elif kind == "flatten":
                y = torch.flatten(a[0], 1)
            elif kind == "reshape":  # [1, F] -> [1, 2, F/2] -> relu... -> [1, F]
                y = a[0].reshape(1, 2, -1)
                y = self.mods[names[0]](y).reshape(1, -1)
            else:
                raise AssertionError(kind)
            vals.append(y)
        return vals[-1]


@dataclass
class _Builder:
    rng: random.Random
    steps: list = field(default_factory=list)
    mods: dict = field(default_factory=dict)

    def module(self, m: nn.Module, arg: int) -> int:
        name = f"m{len(self.mods)}"
        self.mods[name] = m
        return self.op("module", [name], [arg])

    def op(self, kind: str, names: list[str], args: list[int]) -> int:
        self.steps.append((kind, names, args))
        return len(self.steps)

    def activation(self) -> nn.Module:
        cls = self.rng.choice(ACTIVATIONS)
        return cls(0.1) if cls is nn.LeakyReLU else cls()


def random_model(seed: int) -> tuple[nn.Module, torch.Tensor, str]:
    """A random model, an example input and a one-line description."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    b = _Builder(rng)
    cur = 0
    if rng.random() < 0.6:  # image net
        c, h = rng.choice((1, 3, 4)), rng.choice((6, 8, 10))
        x = torch.randn(1, c, h, h)
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice(("conv", "conv", "bn", "act", "pool", "residual", "concat"))
            if kind == "conv":
                k = rng.choice((1, 3))
                stride = 2 if h >= 6 and rng.random() < 0.3 else 1
                out = rng.choice((4, 8, 12))
                groups = c if out % c == 0 and c > 1 and rng.random() < 0.3 else 1
                cur = b.module(nn.Conv2d(c, out, k, stride, k // 2, groups=groups, bias=rng.random() < 0.7), cur)
                c, h = out, (h + 2 * (k // 2) - k) // stride + 1
            elif kind == "bn":
                bn = nn.BatchNorm2d(c)
                with torch.no_grad():
                    bn.running_mean.normal_(0, 0.3)
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.normal_(1, 0.2)
                    bn.bias.normal_(0, 0.2)
                cur = b.module(bn, cur)
            elif kind == "act":
                cur = b.module(b.activation(), cur)
            elif kind == "pool" and h >= 4:
                pool = nn.MaxPool2d(2) if rng.random() < 0.5 else nn.AvgPool2d(2)
                cur, h = b.module(pool, cur), h // 2
            elif kind == "residual":
                y = b.module(nn.Conv2d(c, c, 3, 1, 1), cur)
                y = b.module(b.activation(), y)
                cur = b.op("add", [], [cur, y])
            elif kind == "concat":
                y1 = b.module(nn.Conv2d(c, 4, 1), cur)
                y2 = b.module(nn.Conv2d(c, 4, 3, 1, 1), cur)
                cur, c = b.op("cat", [], [y1, y2]), 8
        if rng.random() < 0.5:
            h = rng.choice((1, 2))
            cur = b.module(nn.AdaptiveAvgPool2d(h), cur)
        cur = b.op("flatten", [], [cur])
        f = c * h * h
        desc = "image"
    else:  # vector net
        f = rng.choice((8, 16, 32))
        x = torch.randn(1, f)
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice(("linear", "linear", "norm", "act", "residual", "concat", "reshape"))
            if kind == "linear":
                out = rng.choice((8, 16, 24))
                cur, f = b.module(nn.Linear(f, out, bias=rng.random() < 0.8), cur), out
            elif kind == "norm":
                cur = b.module(nn.LayerNorm(f), cur)
            elif kind == "act":
                cur = b.module(b.activation(), cur)
            elif kind == "residual":
                y = b.module(nn.Linear(f, f), cur)
                y = b.module(b.activation(), y)
                cur = b.op("add", [], [cur, y])
            elif kind == "concat":
                y1 = b.module(nn.Linear(f, 8), cur)
                y2 = b.module(nn.Linear(f, 8), cur)
                cur, f = b.op("cat", [], [y1, y2]), 16
            elif kind == "reshape" and f % 2 == 0:
                name = f"m{len(b.mods)}"
                b.mods[name] = b.activation()
                cur = b.op("reshape", [name], [cur])
        desc = "vector"
    b.module(nn.Linear(f, rng.choice((3, 5, 10))), cur)
    model = RandomNet(b.steps, b.mods).eval()
    kinds = [type(b.mods[n[0]]).__name__ if k == "module" else k for k, n, _ in b.steps]
    return model, x, f"seed {seed} {desc}: {' '.join(kinds)}"


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over max(1, max |ref|); inf where NaN/inf positions differ."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if not np.array_equal(np.isfinite(got), np.isfinite(ref)):
        return float("inf")
    fin = np.isfinite(ref)
    return float(np.abs(got[fin] - ref[fin]).max(initial=0.0)) / max(1.0, float(np.abs(ref[fin]).max(initial=0.0)))


class Mismatch(AssertionError):
    """Numbers outside the stated tolerance at a stage: a bug the fuzzer reports."""


def _expect(stage: str, err: float) -> None:
    if not err <= TOL[stage]:
        raise Mismatch(f"{stage}: relative difference {err:.3g} > {TOL[stage]}")


def check_model(seed: int, compile_dir: Path | None = None) -> str:
    """Run the model of ``seed`` through every stage; return how far it got (``ok`` or ``refused at
    STAGE: message``). Raises Mismatch for numbers outside ``TOL`` and lets any non-McirError through."""
    model, x, _ = random_model(seed)
    stage = "trace"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            g = mcir.trace(model, (x,))
            stage = "interpret"
            with torch.no_grad():
                want = model(x).numpy()
            xs = x.numpy()
            (ref,) = mcir.interpret(g, xs)
            _expect("torch", relative(ref, want))
            stage = "fold"
            gf = mcir.run_passes(g, "fold")
            (folded,) = mcir.interpret(gf, xs)
            _expect("fold", relative(folded, ref))
            gen = torch.Generator().manual_seed(seed)
            calib = [(torch.randn(x.shape, generator=gen).numpy(),) for _ in range(8)]
            stage = "quant8"
            gq = mcir.run_passes(g, "fold,quant8", calibration=calib)
            if compile_dir is None:
                return "ok (not compiled)"
            stage = "compile f32"
            with tempfile.TemporaryDirectory(dir=compile_dir) as tmp:
                (native,) = mcir.compile(gf, Path(tmp) / "f32")(xs)
                _expect("native f32", relative(native, folded))
                stage = "compile int8"
                inner = [op.result for op in gq.compute_ops() if op.result.type.dtype.name == "u8"]
                gq.set_outputs([*gq.outputs, *inner])
                got = mcir.compile(gq, Path(tmp) / "int8")(xs)
            want_q = mcir.interpret(gq, xs)
            _expect("native int8", relative(got[0], want_q[0]))
            for v, n8, r8 in zip(inner, got[1:], want_q[1:]):
                lsb = int(np.abs(n8.astype(np.int64) - r8.astype(np.int64)).max(initial=0))
                if lsb > TOL["u8 LSB"]:
                    raise Mismatch(f"native int8: %{v.name} differs by {lsb} LSB")
        except McirError as e:
            # one outcome per reason, not per module path: the report counts them
            reason = re.sub(r"\s*\(at (?:[^`()]|`[^`]*`)*\)", "", str(e).splitlines()[0])
            return f"refused at {stage}: {reason[:160]}"
    return "ok"
