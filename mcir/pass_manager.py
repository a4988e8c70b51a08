"""The former home of passes, their registry and the pipeline runner, kept importable for one
release: users' passes import ``Pass``, ``PassContext`` and ``option`` from here.

New code imports from where things live now:

- ``mcir.pass_base``: ``Pass``, ``PassContext``, ``option``, ``pass_``, ``rules_pass``, option coercion
- ``mcir.passes``: the built-in passes (``BUILTIN``, ``ALIASES``), ``get_pass``, ``build_pipeline``
- ``mcir.instrument``: ``run_passes`` and the ``PipelineReport`` (not re-exported here: it reads
  ``GraphStats`` from this module); ``mcir.metrics``: ``compare_outputs``

``GraphStats`` (size and cost of a graph) lives in ``mcir.stats`` and is re-exported here.
"""

from __future__ import annotations

from mcir.errors import ParseError
from mcir.metrics import compare_outputs
from mcir.pass_base import OptionSpec, Pass, PassContext, coerce, option, options_of, pass_, rules_pass
from mcir.passes import (
    ALIASES,
    BUILTIN,
    as_pass,
    as_pass_class,
    build_pipeline,
    get_pass,
    pass_names,
    register_pass,
)
from mcir.stats import GraphStats

__all__ = [
    "ALIASES",
    "BUILTIN",
    "GraphStats",
    "OptionSpec",
    "ParseError",
    "Pass",
    "PassContext",
    "as_pass",
    "as_pass_class",
    "build_pipeline",
    "coerce",
    "compare_outputs",
    "get_pass",
    "option",
    "options_of",
    "pass_",
    "pass_names",
    "register_pass",
    "rules_pass",
]
