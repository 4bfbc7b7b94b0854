"""The CUDA path (pinned host buffers, non-blocking copies); runs where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unitrec as ur

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_recording_matches_cpu(images, transform64, tmp_path):
    sites = ["bn1", "layer1.0.relu:1", {"name": "layer3", "units": "center"}, {"name": "layer4", "pool": "max"}]
    cpu = ur.record(ur.load_model("resnet18"), images, sites, tmp_path / "cpu.h5", transform=transform64,
                    progress=False, batch_size=4)  # the same blocks: only the device differs (TF32 convolutions)
    gpu = ur.record(ur.load_model("resnet18"), images, sites, tmp_path / "gpu.h5", transform=transform64,
                    progress=False, device="cuda", num_workers=2, batch_size=4)
    for site in ("bn1", "layer1.0.relu:1", "layer3", "layer4"):
        a, b = ur.load_layer(cpu, site).values, ur.load_layer(gpu, site).values
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3, err_msg=site)
    assert ur.load_layer(gpu, "bn1").values.min() < 0  # copied before the in-place ReLU, on the GPU too


@cuda
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "googlenet"])
def test_the_hollow_trace_is_the_real_trace_on_cuda(name):
    from unitrec.anatomy import trace as T

    model = ur.load_model(name, seed=0).eval().to("cuda")
    x = torch.randn(1, 3, 224, 224, device="cuda")
    assert T._trace(model, x, hollow=True) == T._trace(model, x)  # zero-image convolutions on cuDNN too
