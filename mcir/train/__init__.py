"""Training through torch: the graph as a module (``to_torch``), training loops, write-back.

The IR stays the source of truth: ``to_torch`` builds a module from a graph, the loops in
``mcir.train.loop`` train it, and ``write_back`` stores the trained weights into the graph with
the same encodings (same sparsity pattern, same sharing, same ranks).
"""

from mcir.train.to_torch import GraphModule, to_torch

__all__ = ["GraphModule", "to_torch"]
