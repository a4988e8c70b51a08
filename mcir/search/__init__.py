"""``mcir.search``: search compression pipelines, every candidate measured as a compiled library.

``mcir.search(graph, data=train, eval=test, objective="size", max_drop=0.015, trials=24, out="search")``
runs an Optuna study (TPE for one objective, NSGA-II for several) stored in ``out/study.db``;
see ``mcir.search.driver.search`` for every argument and docs/passes.md ("I have a model and a
budget") for the workflow. ``mcir search MODEL ...`` is the same from the command line.

The package is itself callable (``mcir.search(...)``): ``mcir.search`` names this package
once any of its modules is imported, so a function of the same name beside it would be
replaced by the package; making the package callable keeps one name for both.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def search(*args: Any, **kwargs: Any) -> Any:
    """Run a search; the arguments are those of ``mcir.search.driver.search``."""
    from mcir.search.driver import search as _search  # lazy: optuna, torch and llvmlite load only when searching

    return _search(*args, **kwargs)


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
