"""`prolongvid train CONFIG --dry-run`: the per-GPU memory a config needs, before any GPU is taken.

Frames, `parallel.sp_size` and sharding decide whether a long-video stage
fits, so they are chosen here, from the config and its `Topology` alone (the
ranks it launches, `train/topology.py`): parameter counts come
from the model built on the meta device (no weights read or allocated), from
the checkpoint's config.json when it is local or cached, else from the public
LLaVA-OneVision-Qwen2-7B shapes. The numbers are an estimate (allocator
slack, communication buffers and the CUDA context are not counted):

- weights: trainable parameters in fp32 (master weights), frozen ones in bf16
  under bf16 training; gradients fp32; AdamW two fp32 states. FSDP divides
  all three by the ranks; DDP holds them whole.
- activations of one micro-batch, for this rank's slice of the sequence
  (sequence length / sp): with activation checkpointing each LM layer keeps
  its input and one layer is recomputed at a time; without, every layer keeps
  its working set. The logits (and their fp32 copy and gradient for the loss),
  the vision tower's share of the frames (frames / sp; the frozen tower keeps
  nothing for backward, the projector does) and the whole sequence's
  embeddings, which every rank of the group holds before taking its slice
  (so they do not shrink with sp), are added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from train.topology import Topology

GIB = 1024**3
TEXT_TOKENS = 512  # a conversation's text beside the video tokens, for the estimate
# Per token and layer, in values: what one Qwen2 block computes (inputs of q/k/v/o, its outputs, two norms, the
# residuals: ~8 x hidden plus the KV projections; the MLP's gate, up, activation and product: 4 x intermediate).
LAYER_HIDDEN, LAYER_INTER = 8, 4


@dataclass(frozen=True)
class Shapes:
    trainable: int  # parameters with a learning rate
    frozen: int
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # key/value heads x head dim
    heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    patches: int  # a frame's patches in the vision tower
    source: str  # where the shapes came from


@dataclass(frozen=True)
class MemoryPlan:
    topology: Topology
    frames: int
    tokens: int  # a sequence, padded to a multiple of sp
    weights: float  # bytes, per GPU
    gradients: float
    optimizer: float
    lm_activations: float
    logits: float
    vision: float
    embeddings: float  # the whole sequence's, on every rank of the group
    source: str

    @property
    def activations(self) -> float:
        return self.lm_activations + self.logits + self.vision + self.embeddings

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def qwen2_7b_config() -> Any:
    """LLaVA-OneVision-Qwen2-7B's shapes (SigLIP so400m at 384 px, Qwen2-7B), for a checkpoint not on disk."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    text = Qwen2Config(vocab_size=152000, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)  # fmt: skip
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                num_attention_heads=16, image_size=384, patch_size=14)  # fmt: skip
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, vision_feature_layer=-1)


def model_config(cfg: Any) -> tuple[Any, str]:
    """The model's config without its weights: the tiny one, the checkpoint's, or the 7B shapes."""
    if cfg.model.tiny:
        from train.trainer import load_parts

        return load_parts(cfg)[1].config, "the tiny test model"
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(cfg.model.path, local_files_only=True), f"{cfg.model.path} config.json"
    except (OSError, ValueError):
        return qwen2_7b_config(), f"LLaVA-OneVision-Qwen2-7B shapes ({cfg.model.path} not on disk)"


def shapes(cfg: Any) -> Shapes:
    import torch

    from train.model import VideoLlava
    from train.optim import part_of

    config, source = model_config(cfg)
    with torch.device("meta"):
        model = VideoLlava(config)
    rates = cfg.optim.lr.model_dump()
    trainable = sum(p.numel() for n, p in model.named_parameters() if rates[part_of(n)] > 0)
    total = sum(p.numel() for p in model.parameters())
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Shapes(trainable, total - trainable, text.hidden_size, text.intermediate_size, text.num_hidden_layers,
                  text.num_key_value_heads * head_dim, text.num_attention_heads, text.vocab_size, vision.hidden_size,
                  vision.intermediate_size, (vision.image_size // vision.patch_size) ** 2, source)  # fmt: skip


def memory_plan(cfg: Any, topology: Topology, found: Shapes | None = None) -> MemoryPlan:
    """Per-GPU bytes for `cfg` laid out as `topology` (`found`: shapes already read, else read from the config)."""
    from pipeline.core.video_tokens import frame_tokens

    s = found or shapes(cfg)
    sp = topology.sp
    if s.heads % sp:
        raise ValueError(f"parallel.sp_size {sp} does not divide the language model's {s.heads} attention heads")
    value = 2 if cfg.optim.precision == "bf16" else 4  # bytes of an activation
    shard = topology.world if topology.fsdp else 1
    frames, batch = cfg.data.frames, cfg.data.batch_size
    tokens = frames * frame_tokens(cfg.model.video_pool_size) + TEXT_TOKENS
    tokens += -tokens % sp
    mine = batch * tokens // sp  # this rank's tokens
    layer = mine * (LAYER_HIDDEN * s.hidden + 2 * s.kv_dim + LAYER_INTER * s.intermediate) * value
    kept = s.layers * mine * s.hidden * value + layer if cfg.model.activation_checkpointing else s.layers * layer
    my_frames = batch * math.ceil(frames / sp) * s.patches
    vision = (my_frames * (4 * s.vision_hidden + s.vision_intermediate) * value  # one tower layer at a time
              + my_frames * (s.vision_hidden + 2 * s.hidden) * value)  # the projector's saved values  # fmt: skip
    return MemoryPlan(
        topology=topology, frames=frames, tokens=tokens,
        weights=(s.trainable * 4 + s.frozen * value) / shard, gradients=s.trainable * 4 / shard,
        optimizer=s.trainable * 8 / shard, lm_activations=kept, logits=mine * s.vocab * (value + 8), vision=vision,
        embeddings=2 * batch * tokens * s.hidden * value, source=s.source,  # token embeddings, video tokens placed
    )  # fmt: skip


def format_plan(plan: MemoryPlan, cfg: Any) -> str:
    """The table `--dry-run` prints."""
    ckpt = "on" if cfg.model.activation_checkpointing else "off"
    topo = plan.topology
    head = (f"{plan.frames} frames -> {plan.tokens} tokens a sequence ({plan.tokens // topo.sp} a rank); "
            f"{topo.world} ranks, {topo.sharding}, sp {topo.sp} ({topo.readers} reading data); "
            f"{cfg.optim.precision}; activation checkpointing {ckpt}")  # fmt: skip
    rows = [("weights", plan.weights), ("gradients", plan.gradients), ("optimizer state", plan.optimizer),
            ("activations", plan.activations), ("  language model", plan.lm_activations),
            ("  logits and loss", plan.logits), ("  vision tower and projector", plan.vision),
            ("  sequence embeddings", plan.embeddings), ("total", plan.total)]
    lines = [head, f"shapes: {plan.source}", f"{'per GPU (estimate)':<29}{'GiB':>9}"]
    lines += [f"{name:<29}{size / GIB:>9.2f}" for name, size in rows]
    return "\n".join(lines)
