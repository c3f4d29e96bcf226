"""The video LLM: transformers' LLaVA-OneVision (SigLIP tower, 2-layer GELU projector, Qwen2) with the
paper's video tokens: each frame's patch grid pooled bilinearly to `video_pool_size`² (12x12 from 27x27)
plus one newline embedding per row, 12 x 13 = 156 tokens a frame.

Only the video feature path differs from transformers' class (which pools 2x and adds one newline per
video), so checkpoints are plain LLaVA-OneVision checkpoints: `LlavaOnevisionForConditionalGeneration.
from_pretrained` loads them, and `VideoLlava.from_pretrained` loads them with this pooling.
"""

from __future__ import annotations

import functools

import math
from typing import Any

import torch
from torch import nn
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from pipeline.core.video_tokens import VIDEO_POOL, frame_tokens


def pool_frames(features: torch.Tensor, pool: int) -> torch.Tensor:
    """(frames, grid², dim) -> (frames, pool, pool, dim), bilinear."""
    frames, seq, dim = features.shape
    side = int(math.isqrt(seq))
    if side * side != seq:
        raise ValueError(f"vision features of {seq} patches are not a square grid")
    grid = features.view(frames, side, side, dim).permute(0, 3, 1, 2)
    pooled = nn.functional.interpolate(grid, size=(pool, pool), mode="bilinear", align_corners=False)
    return pooled.permute(0, 2, 3, 1)


def tokens_per_frame(config: LlavaOnevisionConfig) -> int:
    return frame_tokens(getattr(config, "video_pool_size", VIDEO_POOL))


class _PaperVideoPooling(LlavaOnevisionModel):
    """LlavaOnevisionModel with the paper's per-row-newline video pooling (no new parameters)."""

    def get_video_features(self, pixel_values_videos, vision_feature_layer=None, vision_feature_select_strategy=None,
                           **kwargs: Any):
        cfg = self.config
        layer = cfg.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = cfg.vision_feature_select_strategy if vision_feature_select_strategy is None else vision_feature_select_strategy
        batch, frames, channels, height, width = pixel_values_videos.shape
        kwargs.pop("return_dict", None)
        out = self.vision_tower(pixel_values_videos.view(batch * frames, channels, height, width),
                                output_hidden_states=True, return_dict=True)
        if isinstance(layer, int):
            hidden = out.hidden_states[layer]
        else:
            hidden = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if strategy == "default":
            hidden = hidden[:, 1:]
        pool = getattr(cfg, "video_pool_size", VIDEO_POOL)
        grid = pool_frames(self.multi_modal_projector(hidden), pool)  # (B*F, pool, pool, D)
        newline = self.image_newline.to(grid.dtype).view(1, 1, 1, -1).expand(grid.shape[0], pool, 1, -1)
        tokens = torch.cat([grid, newline], dim=2).reshape(batch, frames * pool * (pool + 1), -1)
        return BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=tokens,
                                          hidden_states=None)


class VideoLlava(LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision for video with the paper's 156 tokens a frame."""

    def __init__(self, config: LlavaOnevisionConfig):
        super().__init__(config)
        self.model.__class__ = _PaperVideoPooling  # same parameters, the paper's video path
        self.sequence_group: Any = None  # set by `train.sequence.enable`: this rank computes a slice of each sequence

    # transformers' forward, or with sequence parallelism the logits of this rank's slice (`train/sequence.py`).
    # The split lives inside the model's own forward so DDP and FSDP2 wrap it as they wrap the plain one; the
    # wrapper keeps transformers' signature, which `generate` reads to check its inputs (pixel_values_videos).
    @functools.wraps(LlavaOnevisionForConditionalGeneration.forward)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.sequence_group is None:
            return super().forward(*args, **kwargs)
        from train.sequence import forward

        return forward(self, self.sequence_group, *args, **kwargs)

    def freeze_vision_tower(self) -> None:
        for p in self.model.vision_tower.parameters():
            p.requires_grad_(False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part, for per-part learning rates (`optim.parameter_groups`)."""
        from train.optim import parameter_groups

        return parameter_groups(self)


def tiny_config(vocab_size: int, video_token_id: int, image_token_id: int, pool: int = 4) -> LlavaOnevisionConfig:
    """A few-MB random model with the real architecture: 2-layer SigLIP (64 px, 8 px patches), 2-layer Qwen2."""
    from transformers import Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=8)
    text = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                                  video_token_id=video_token_id, vision_feature_layer=-2,
                                  vision_feature_select_strategy="full", projector_hidden_act="gelu")
    config.video_pool_size = pool
    return config
