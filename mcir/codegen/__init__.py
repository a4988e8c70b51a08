"""The native backend: lowers a graph through llvmlite to a freestanding object, a shared
library with a C ABI (``docs/abi.md``) and its header. The only package that imports llvmlite.

    lib = mcir.codegen.compile(graph, "build/mlp")     # build/mlp.o, mlp.so, mlp.h
    (y,) = lib(x)
"""

from mcir.codegen.compiler import Artifacts, compile, default_name

__all__ = ["Artifacts", "compile", "default_name"]
