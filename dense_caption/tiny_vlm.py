"""Build a tiny, randomly initialised Qwen2-VL checkpoint for tests and the demo.

Why: the dense-caption stage talks to a real vLLM server, and the tests and the
demo need one on CPU-only machines without hub access. This writes a ~1.3M
parameter Qwen2-VL (random weights, a byte-level BPE tokenizer trained on the
Python standard library's sources, Qwen's special tokens, a ChatML template
with image/video placeholders) that vLLM loads and serves in under a minute.
Its output is gibberish: it tests plumbing (requests, batching, structured
output, parsing), never wording. Real runs point the config at a real model
such as Qwen2.5-VL instead.

Usage (with the vLLM venv's python, whose transformers version vLLM expects):
    .venv-vllm/bin/python -m dense_caption.tiny_vlm OUT_DIR
A marker file makes reruns free; the build goes to a temporary folder that is
renamed into place, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

MARKER = ".tiny-vlm.json"
VERSION = 1  # bump when the recipe changes, so cached builds are rebuilt
SEED = 0
VOCAB_SIZE = 2048
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64  # at most 64 vision tokens an image

SPECIAL_TOKENS = {
    "pad_token": "<|endoftext|>",
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
}
VISION_TOKENS = {
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
}

# ChatML; each image part becomes <|vision_start|><|image_pad|><|vision_end|>
# and each video part the same with <|video_pad|> (vLLM expands the pads).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- set kind = part['type'] if 'type' in part else '' -%}"
    "{%- if kind == 'text' -%}{{- part['text'] -}}"
    "{%- elif kind in ('image', 'image_url') or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif kind in ('video', 'video_url') or 'video' in part or 'video_url' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _corpus(limit_bytes: int = 4_000_000) -> list[str]:
    """Local text to train the tokenizer on: the standard library's sources."""
    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text)
        if size >= limit_bytes:
            break
    return texts


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + list(VISION_TOKENS.values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=VISION_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        **SPECIAL_TOKENS,
    )


def build(out_dir: str | os.PathLike) -> Path:
    """Write the model to out_dir unless a complete build is already there."""
    out = Path(out_dir)
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("version") == VERSION:
        return out

    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in VISION_TOKENS.items()}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 64,  # vLLM's CPU attention supports only some head sizes
        "max_position_embeddings": 4096,
        # mrope_section must sum to head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [8, 12, 12]},
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "depth": 2, "embed_dim": 128, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 128,  # = text hidden
        "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()

    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
              "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        params = sum(p.numel() for p in model.parameters())
        (tmp / MARKER).write_text(json.dumps({"version": VERSION, "seed": SEED, "parameters": params}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the model to (reused if already built)")
    args = parser.parse_args(argv)
    out = build(args.out_dir)
    print(f"tiny Qwen2-VL ready in {out}: {(out / MARKER).read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
