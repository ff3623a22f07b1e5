"""Narrow numpy-2 compatibility shim for ``lvis==0.5.3`` (the only LVIS API on PyPI).

``lvis/eval.py`` calls ``np.cumsum(...).astype(dtype=np.float)``; the ``np.float`` alias was
removed in numpy 1.24, so ``LVISEval.accumulate()`` raises ``AttributeError`` under numpy 2.
Instead of adding ``float`` back to numpy globally, we give *only* the ``lvis.eval`` module a
view of numpy that also has ``float`` (the builtin, which is what the alias meant). Nothing else
in the process sees a change. The function is idempotent and is called when
``rsloss_d2.evaluation`` is imported.
"""
import types

import numpy as np

__all__ = ["patch_lvis_numpy"]


class _NumpyWithFloatAlias(types.ModuleType):
    """numpy, plus the removed ``np.float`` alias (= builtin ``float``)."""

    float = float

    def __getattr__(self, name):
        return getattr(np, name)


def patch_lvis_numpy():
    """Make ``lvis.eval`` work under numpy >= 1.24. Returns True if a patch was applied."""
    import lvis.eval as lvis_eval

    if hasattr(np, "float") or isinstance(lvis_eval.np, _NumpyWithFloatAlias):
        return False
    lvis_eval.np = _NumpyWithFloatAlias("numpy")
    return True
