"""Code generation targets: which machine the emitted object runs on.

A ``Target`` names an LLVM triple, a CPU and its features, and derives the facts the
kernel generators specialise on: how many f32 lanes a vector register holds, how many
vector registers there are, and whether instructions such as AVX-512 VNNI exist.

``target="native"`` (the default) is the host CPU with its exact feature set;
``"x86-64-v2"``, ``"x86-64-v3"`` and ``"x86-64-v4"`` are the psABI micro-architecture
levels (SSE4.2, AVX2+FMA, AVX-512) for shipping one library to many x86 machines.
Any other LLVM triple (``triple="aarch64-linux-gnu"``) is a cross target: mcir emits
the ``.o`` and ``.h`` and the user links with their own toolchain.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import llvmlite.binding as llvm

from mcir.errors import CodegenError

X86_LEVELS = ("x86-64-v2", "x86-64-v3", "x86-64-v4")
TARGETS = ("native", *X86_LEVELS)


@functools.cache
def _init_llvm() -> None:
    # llvm.initialize() is gone in llvmlite 0.45+; targets and printers still need it
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # inline assembly (the AMX kernel's tile instructions and system call) needs the parser, or LLVM aborts
    llvm.initialize_native_asmparser()


@dataclass(frozen=True)
class Target:
    """A resolved code generation target."""

    name: str  # "native", "x86-64-v3", or the cross triple
    triple: str
    cpu: str
    features: str  # LLVM feature string, "+avx2,+fma,..." (empty: the CPU's defaults)
    native: bool  # runs on this machine: mcir links and loads the library

    @property
    def arch(self) -> str:
        return self.triple.split("-", 1)[0]

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64")

    def has(self, feature: str) -> bool:
        """Whether the target has an LLVM feature (``"avx512f"``, ``"avx512vnni"``, ``"neon"``...)."""
        return feature in _feature_set(self)

    @property
    def vector_bits(self) -> int:
        """Width of the vector registers the kernels are tiled for."""
        if self.is_x86:
            if self.has("avx512f") and not self.has("prefer-256-bit"):
                return 512
            if self.has("avx2") or self.has("avx"):
                return 256
            return 128
        if self.arch in ("aarch64", "arm64"):
            return 128
        return 128

    @property
    def pointer_bits(self) -> int:
        """Width of a pointer and of ``size_t`` on the target (from LLVM's data layout)."""
        layout = str(self.machine().target_data)
        m = re.search(r"(?:^|-)p:(\d+)", layout)
        return int(m.group(1)) if m else 64

    @property
    def f32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def vector_registers(self) -> int:
        """Architectural vector registers (the budget for GEMM accumulators)."""
        if self.is_x86:
            return 32 if self.has("avx512f") else 16
        if self.arch in ("aarch64", "arm64"):
            return 32
        return 16

    def describe(self) -> str:
        """One line for the metadata string and reports."""
        return f"{self.name} ({self.triple}, cpu {self.cpu})"

    def machine(self) -> llvm.TargetMachine:
        """An LLVM target machine for position-independent shared-library code at O3."""
        _init_llvm()
        try:
            tgt = llvm.Target.from_triple(self.triple)
        except RuntimeError as e:
            raise CodegenError(f"LLVM cannot generate code for triple '{self.triple}': {e}") from None
        # pic + default code model: static/large links with DT_TEXTREL, static/small fails to link
        return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=3, reloc="pic", codemodel="default")


@functools.cache
def _feature_set(target: Target) -> frozenset[str]:
    listed = [f for f in target.features.split(",") if f]
    on = {f[1:] for f in listed if f.startswith("+")}
    off = {f[1:] for f in listed if f.startswith("-")}
    return frozenset((set(_LEVEL_FEATURES.get(target.cpu, ())) | on) - off)


# the features of each x86-64 psABI level that matter to the kernel generators
_V2 = ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16")
_V3 = (*_V2, "avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe")
_V4 = (*_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_LEVEL_FEATURES = {"x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}


# target names for common machines: name -> (LLVM triple, CPU, baseline features). The baselines are what each
# Linux distribution assumes: with no FPU features LLVM would call soft-float helpers (__addsf3...) from libgcc,
# and the object must stay freestanding.
CROSS_TARGETS = {
    "aarch64": ("aarch64-unknown-linux-gnu", "generic", "+neon"),
    "arm64": ("aarch64-unknown-linux-gnu", "generic", "+neon"),
    "armv7": ("armv7-unknown-linux-gnueabihf", "generic", "+neon,+vfp3,+d32"),
    "riscv64": ("riscv64-unknown-linux-gnu", "generic-rv64", "+m,+a,+f,+d,+c"),
    "x86-64": ("x86_64-unknown-linux-gnu", "x86-64", ""),
}
_ARCH_BASELINE = {"aarch64": "+neon", "arm64": "+neon", "riscv64": "+m,+a,+f,+d,+c"}
_FEATURE_RE = re.compile(r"^[+-][A-Za-z0-9_.-]+$")


def target_names() -> tuple[str, ...]:
    """Every name ``resolve`` accepts as ``target`` (besides a full LLVM triple given as ``triple``)."""
    return (*TARGETS, *CROSS_TARGETS)


def _merge_features(base: str, extra: str | None) -> str:
    """``base`` with the user's ``+f,-g`` list applied (later entries win); CodegenError on bad syntax."""
    if not extra:
        return base
    items = [f.strip() for f in extra.split(",") if f.strip()]
    bad = [f for f in items if not _FEATURE_RE.match(f)]
    if bad:
        raise CodegenError(
            f"bad feature '{bad[0]}' in '{extra}': write a comma-separated list of +name or -name, e.g. +dotprod,-sve"
        )
    merged = {f[1:]: f[0] for f in base.split(",") if f}
    for f in items:
        merged[f[1:]] = f[0]
    return ",".join(sign + name for name, sign in merged.items())


def resolve(
    target: str = "native", triple: str | None = None, cpu: str | None = None, features: str | None = None
) -> Target:
    """The ``Target`` for a target name, an optional cross triple, CPU and extra features; CodegenError if
    unsupported.

    ``target`` is ``native``, an x86-64 level, or a machine name of ``CROSS_TARGETS`` (``aarch64``,
    ``armv7``, ``riscv64``, ``x86-64``); ``triple`` names any other LLVM triple. ``cpu`` replaces the CPU
    (an LLVM CPU name such as ``cortex-a76`` or ``skylake-avx512``; LLVM warns on stderr about names it
    does not know) and ``features`` adds or removes LLVM features (``"+dotprod,+i8mm"``). Kernels
    specialise only on features the target lists: with ``cpu`` alone they assume the triple's baseline.
    """
    _init_llvm()
    host = llvm.get_process_triple()
    if target in CROSS_TARGETS and triple is None:
        triple, default_cpu, base = CROSS_TARGETS[target]
        if triple.split("-", 1)[0] == host.split("-", 1)[0]:  # e.g. "x86-64" on an x86-64 machine: runs here
            return Target(target, host, cpu or default_cpu, _merge_features(base, features), native=True)
        return _cross(target, triple, cpu or default_cpu, _merge_features(base, features))
    if triple is not None and triple != host:
        if target not in ("native", "generic"):
            raise CodegenError(
                f"target '{target}' names {'an x86-64 CPU level' if target in X86_LEVELS else 'a machine'}; "
                f"with triple='{triple}' use "
                "target='native' (the triple's generic CPU) and cpu=/features= to refine it"
            )
        arch = triple.split("-", 1)[0]
        return _cross(triple, triple, cpu or "generic", _merge_features(_ARCH_BASELINE.get(arch, ""), features))
    if target not in TARGETS:
        raise CodegenError(
            f"unknown target '{target}'; valid targets: {', '.join(target_names())} "
            "(or pass triple='...' for another architecture)"
        )
    if target == "native":
        if cpu is None and features is None:
            return Target("native", host, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(), native=True)
        if cpu is None:  # the host CPU with features switched on or off
            merged = _merge_features(llvm.get_host_cpu_features().flatten(), features)
            return Target("native", host, llvm.get_host_cpu_name(), merged, native=True)
        return Target(f"cpu={cpu}", host, cpu, _merge_features("", features), native=True)
    if not host.startswith(("x86_64", "amd64")):
        raise CodegenError(f"target '{target}' is an x86-64 level but this machine is {host}")
    level = "" if cpu is None else ",".join("+" + f for f in _LEVEL_FEATURES[target])  # a named CPU keeps the level
    return Target(target, host, cpu or target, _merge_features(level, features), native=True)


def _cross(name: str, triple: str, cpu: str, features: str) -> Target:
    try:
        llvm.Target.from_triple(triple)  # only checked for existence; Target.machine() builds the real one
    except RuntimeError:
        raise CodegenError(
            f"unsupported triple '{triple}': LLVM has no backend for it; use e.g. 'x86_64-linux-gnu' or "
            f"'aarch64-linux-gnu', or a target name: {', '.join(CROSS_TARGETS)}"
        ) from None
    return Target(name, triple, cpu, features, native=False)


def host_supports(target: Target) -> bool:
    """Whether this machine can run code built for ``target``: same architecture, a CPU whose features
    are known here (the host's, a generic one or an x86-64 level) and every listed feature present."""
    if not target.native:
        return False
    if target.cpu not in (llvm.get_host_cpu_name(), "generic", "x86-64", *X86_LEVELS):
        return False  # LLVM may use any instruction of a named CPU; its feature list is not known here
    host = frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)
    return all(f in host for f in _feature_set(target) if f != "cx16")
