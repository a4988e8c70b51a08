"""Whole-graph analyses that passes consult but that are not passes themselves.

Each module is a set of pure functions over a ``Graph`` (nothing here edits the IR):

- ``dependency``: structured-pruning dependency groups (channels tied by residual adds, concat, ...)
- ``calibration``: observing activation ranges on calibration batches, affine parameters
- ``sparse_cost``: the measured rule deciding when sparse storage pays
- ``layers``: which weighted layers a pass touches (the shared ``skip`` syntax)
"""
