"""The numpy-2 shim for lvis 0.5.3: LVISEval runs end to end, numpy itself is left untouched."""
import json

import numpy as np
import pytest

from rsloss_d2.data.synthetic import generate_shapes_lt
from rsloss_d2.evaluation.lvis_compat import _NumpyWithFloatAlias, patch_lvis_numpy


def test_numpy_is_not_patched_globally():
    import rsloss_d2.evaluation  # noqa: F401  (applies the shim)
    import lvis.eval

    assert not hasattr(np, "float"), "the shim must not add np.float to numpy itself"
    assert isinstance(lvis.eval.np, _NumpyWithFloatAlias)
    assert lvis.eval.np.float is float and lvis.eval.np.cumsum is np.cumsum
    assert patch_lvis_numpy() is False  # idempotent


def test_lvis_eval_runs_and_is_perfect_on_ground_truth(tmp_path):
    import rsloss_d2.evaluation  # noqa: F401
    from lvis import LVIS, LVISEval, LVISResults

    path = generate_shapes_lt(str(tmp_path), "val", 12, image_size=96, seed=1, progress=False)
    gt = LVIS(path)
    with open(path) as f:
        anns = json.load(f)["annotations"]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9} for a in anns]
    ev = LVISEval(gt, LVISResults(gt, dets), "bbox")
    ev.run()  # accumulate() uses np.float: raises AttributeError without the shim
    assert ev.results["AP"] == pytest.approx(1.0)


def test_without_shim_lvis_fails_under_numpy2(monkeypatch):
    import lvis.eval

    monkeypatch.setattr(lvis.eval, "np", np)
    with pytest.raises(AttributeError):
        lvis.eval.np.float  # noqa: B018
