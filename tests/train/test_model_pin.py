"""What `train/model.py` relies on in transformers' LLaVA-OneVision, pinned: an upgrade that changes it fails here.

`VideoLlava` swaps its `.model` to `_PaperVideoPooling`, a `LlavaOnevisionModel` whose `get_video_features` makes
the paper's tokens (pool x (pool + 1) a frame). That holds only while:
- `LlavaOnevisionForConditionalGeneration` keeps the vision/text model at `.model`, of class `LlavaOnevisionModel`
  (the class swap keeps its parameters);
- `LlavaOnevisionModel.get_video_features` takes (pixel_values_videos, vision_feature_layer,
  vision_feature_select_strategy, **kwargs), and the forward passes it nothing our override drops silently;
- the forward calls `self.get_video_features` for `pixel_values_videos` and scatters its `pooler_output`
  (batch, tokens, dim), flattened over the batch, into the video-token positions, in order.

Written against transformers 5.24.0 (`models/llava_onevision/modeling_llava_onevision.py`).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fixtures.tiny_train_model import build_model, build_tokenizer
from train.chat import ChatEncoder
from train.model import VideoLlava, _PaperVideoPooling, tokens_per_frame

CHANGED = f"transformers {transformers.__version__} changed LlavaOnevisionModel.get_video_features; review train/model.py"
PARAMETERS = ["pixel_values_videos", "vision_feature_layer", "vision_feature_select_strategy"]
FORWARD_PASSES = {"vision_feature_layer", "vision_feature_select_strategy", "return_dict"}  # what the override takes
TURNS = [{"from": "human", "value": "<image>\nWhat happens in the video?"},
         {"from": "gpt", "value": "A person walks across the room."}]


@pytest.fixture(scope="module")
def parts():
    tok = build_tokenizer()
    return tok, build_model(tok, pool=4).eval()


def test_the_model_sits_at_dot_model_as_llava_onevision_model(parts):
    _, model = parts
    plain = LlavaOnevisionForConditionalGeneration(model.config)
    assert type(plain.model) is LlavaOnevisionModel, CHANGED
    assert type(model.model) is _PaperVideoPooling and _PaperVideoPooling.__bases__ == (LlavaOnevisionModel,), CHANGED
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in model.named_parameters()], CHANGED
    for part in ("vision_tower", "multi_modal_projector", "image_newline", "language_model"):
        assert hasattr(plain.model, part), f"{CHANGED} (no LlavaOnevisionModel.{part})"


def test_get_video_features_takes_the_parameters_the_override_takes():
    theirs = inspect.signature(LlavaOnevisionModel.get_video_features).parameters
    ours = inspect.signature(_PaperVideoPooling.get_video_features).parameters
    named = [n for n, p in theirs.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert named == PARAMETERS, f"{CHANGED}: {named}"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in theirs.values()), CHANGED
    assert [n for n in ours if n not in ("self", "kwargs")] == PARAMETERS
    assert "return_dict" in inspect.getsource(LlavaOnevisionModel.forward), CHANGED  # the override pops it


def test_the_forward_scatters_get_video_features_pooler_output_into_the_video_tokens(parts, monkeypatch):
    tok, model = parts
    encoder = ChatEncoder(tok, video_token="<video>")
    frames, pool = 3, model.config.video_pool_size
    assert tokens_per_frame(model.config) == pool * (pool + 1)
    enc = encoder.encode(TURNS, frames * tokens_per_frame(model.config))
    ids = torch.tensor([enc.input_ids])
    pixels = torch.rand(1, frames, 3, 64, 64) * 2 - 1
    calls, embeds = [], {}
    original = _PaperVideoPooling.get_video_features

    def recording(self, pixel_values_videos, *args, **kwargs):
        calls.append((pixel_values_videos, args, dict(kwargs)))
        out = original(self, pixel_values_videos, *args, **kwargs)
        embeds["video"] = out.pooler_output.detach().clone()
        return BaseModelOutputWithPooling(last_hidden_state=torch.full_like(out.last_hidden_state, float("nan")),
                                          pooler_output=out.pooler_output)  # only pooler_output may be consumed

    monkeypatch.setattr(_PaperVideoPooling, "get_video_features", recording)
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: embeds.__setitem__("inputs", kwargs["inputs_embeds"].detach().clone()),
        with_kwargs=True)  # fmt: skip
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values_videos=pixels).logits
    finally:
        hook.remove()
    assert len(calls) == 1, f"{CHANGED}: the forward called get_video_features {len(calls)} times"
    got_pixels, args, kwargs = calls[0]
    assert got_pixels is pixels and not args, CHANGED
    assert set(kwargs) <= FORWARD_PASSES, f"{CHANGED}: the forward passes {sorted(set(kwargs) - FORWARD_PASSES)}"
    video = embeds["video"]
    assert video.shape == (1, frames * pool * (pool + 1), model.config.text_config.hidden_size), CHANGED
    positions = ids[0] == model.config.video_token_id
    assert int(positions.sum()) == frames * pool * (pool + 1)
    assert torch.equal(embeds["inputs"][0, positions], video[0].to(embeds["inputs"].dtype)), CHANGED
    assert torch.isfinite(logits).all(), f"{CHANGED}: the forward read more than pooler_output"


def test_a_saved_checkpoint_loads_the_override(parts, tmp_path):
    _, model = parts
    model.save_pretrained(tmp_path / "ckpt")
    assert type(VideoLlava.from_pretrained(tmp_path / "ckpt").model) is _PaperVideoPooling, CHANGED
