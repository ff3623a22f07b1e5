"""rsloss_d2.modeling.host_copies.to_device: the values, dtype and device of torch.as_tensor
(the pinned, non-blocking CUDA path is exercised by tools/diagnostics/count_host_syncs.py on a GPU)."""
import torch

from rsloss_d2.modeling.host_copies import to_device


def test_to_device_matches_as_tensor_on_cpu():
    for values, dtype in (([3, 5], None), ([[1.5, 2.0], [0.25, 4.0]], torch.float64),
                          ((7,), torch.int32), (torch.arange(4), None)):
        got = to_device(values, "cpu", dtype)
        want = torch.as_tensor(values, dtype=dtype)
        assert got.device.type == "cpu" and got.dtype == want.dtype
        assert torch.equal(got, want)
