"""trainer=fsdp keeps the gpu trainer's gradient_clip_val: norm clipping must go through FSDP's own clip."""

from types import SimpleNamespace

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision, Precision
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy


def test_fsdp_clips_by_the_global_norm_of_the_sharded_root(build_module, compose_config):
    assert compose_config("trainer=fsdp").trainer.gradient_clip_val  # the case this test is about
    module, _ = build_module("stage=qat")
    calls = []
    strategy = FSDPStrategy()
    strategy.model = SimpleNamespace(clip_grad_norm_=calls.append)
    module._trainer = SimpleNamespace(
        strategy=strategy, precision_plugin=FSDPPrecision("32-true"), gradient_clip_val=1.0,
        gradient_clip_algorithm=None,
    )
    module.configure_gradient_clipping(torch.optim.SGD(module.parameters(), lr=0.1), 1.0, None)
    assert calls == [1.0]


def test_other_strategies_keep_lightnings_clipping(build_module):
    module, _ = build_module("stage=qat")
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    module._trainer = SimpleNamespace(
        strategy=SingleDeviceStrategy("cpu"), precision_plugin=Precision(), gradient_clip_val=1.0,
        gradient_clip_algorithm=None,
    )
    module.configure_gradient_clipping(torch.optim.SGD(params, lr=0.1), 1.0, None)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    torch.testing.assert_close(norm, torch.tensor(1.0), rtol=1e-4, atol=1e-4)
