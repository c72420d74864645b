"""The machine a run is named by, its measured matmul ceiling, and model-FLOP utilisation as nanoGPT counts it."""

from __future__ import annotations

import pytest

from sbmoe_ray.runtime.hardware import describe_machine, encoder_flops_per_token, machine, matmul_ceiling, utilisation

from helpers import make_tiny_bert


def test_the_machine_is_named_by_cpu_capability_and_gpu():
    m = machine()
    assert set(m) == {"cpu", "capability", "native_bf16_cpu", "threads", "gpu"} and m["threads"] >= 1
    assert m["cpu"] in describe_machine() and m["capability"] in describe_machine()


def test_utilisation_is_model_flops_per_second_over_the_measured_ceiling():
    ceiling = matmul_ceiling("fp32", size=256)
    assert ceiling > 1e8 and matmul_ceiling("fp32", size=256) == ceiling          # measured once per process
    backbone = make_tiny_bert(100, hidden=32, layers=2)
    params = sum(p.numel() for n, p in backbone.named_parameters() if not n.startswith("embeddings."))
    assert encoder_flops_per_token(backbone, 16) == 2 * params + 4 * 2 * 16 * 32
    assert utilisation(matmul_ceiling("fp32", "cpu"), 1.0, "fp32", "cpu") == pytest.approx(1.0)
