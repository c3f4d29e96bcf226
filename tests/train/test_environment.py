"""The tested install path pins a torch/torchvision pair that works here; this proves it imports and runs."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def test_pinned_torch_pair_is_installed_and_torchvision_ops_load():
    torch = pytest.importorskip("torch", reason="the train extra is not installed")
    import torchvision
    from torchvision.ops import nms

    pins = _pins()
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]  # the compiled op runs: the failure mode of mismatched pairs


def test_transformers_imports_beside_torchvision_offline():
    pytest.importorskip("torch", reason="the train extra is not installed")
    import os

    import transformers

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    config = transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=128)
    model = transformers.Qwen2ForCausalLM(config).eval()
    import torch

    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, 128) and torch.isfinite(logits).all()


def test_decord_and_torch_share_a_process():
    """A decord build that preloads pip's CUDA libraries on import (decord2 3.4 did: libnvblas) kills torch's next matmul.

    Ray reuses worker processes across stages, so a decode task and a CLIP task
    may well meet in one process: importing decord must keep torch working.
    """
    pytest.importorskip("torch", reason="the train extra is not installed")
    import subprocess
    import sys

    code = (
        "from pipeline.video.decoders import import_decord; import_decord(); import torch; "
        "print(torch.nn.Linear(32, 64)(torch.randn(4, 32)).shape[-1])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "64"
