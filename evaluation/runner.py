"""Ask a checkpoint the questions as it was trained: same frames, same chat prompt, the 156-token video path.

The checkpoint loads as `VideoLlava` (LLaVA-OneVision with the paper's per-row-newline pooling; stock
LLaVA-OneVision would see other video tokens). Frames go through the trainer's decode and normalisation
(`train/data.py`), the prompt through its `ChatEncoder` with the assistant header appended, and answers are
generated greedily, a batch of questions at a time (left-padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from evaluation.answers import extract_letter
from evaluation.questions import Question
from train import checkpoint
from train.chat import ChatEncoder
from train.data import DataConfig, decode_frames
from train.model import VideoLlava, tokens_per_frame


@dataclass
class Evaluator:
    model: Any
    tokenizer: Any
    data: DataConfig  # frames, image size, SigLIP normalisation
    tokens_per_frame: int  # the model's
    encoder: ChatEncoder
    device: torch.device
    source: str  # the checkpoint directory

    def prompt_ids(self, question: Question) -> list[int]:
        turns = [{"from": "human", "value": question.prompt}]
        return self.encoder.prompt(turns, self.data.frames * self.tokens_per_frame)

    def pixels(self, question: Question) -> torch.Tensor:
        return decode_frames(question.frames(self.data.frames, self.data.image_size), self.data)

    @torch.no_grad()
    def answer(self, batch: list[Question], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers to a batch of questions (left-padded so every prompt ends where generation starts)."""
        ids = [self.prompt_ids(q) for q in batch]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        dtype = next(self.model.parameters()).dtype
        pixels = torch.stack([self.pixels(q) for q in batch]).to(self.device, dtype)
        out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                  pixel_values_videos=pixels, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=pad, eos_token_id=self.encoder.im_end)  # fmt: skip
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]

    def run(self, questions: list[Question], batch_size: int = 4) -> Iterator[dict[str, Any]]:
        """One result row per question, in order."""
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            for q, text in zip(batch, self.answer(batch)):
                chosen = extract_letter(text, q.options)
                yield {"id": q.qid, "video": q.video, "duration": q.duration, "task_type": q.task_type,
                       "qa_type": q.qa_type, "answer": q.answer, "output": text, "chosen": chosen,
                       "correct": chosen == q.answer}  # fmt: skip


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint dir, or a training run dir (its latest checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").exists() or (path / "config.json").exists():
        return path
    found = checkpoint.latest(path)
    if found is None:
        raise FileNotFoundError(f"CHECKPOINT: no checkpoint at {path} (a checkpoint dir or a training run dir)")
    return found


def trained_frames(ckpt: Path) -> int | None:
    """The frame count the checkpoint's stage trained with (its run's train.resolved.yaml), if known."""
    import yaml

    resolved = ckpt.parent.parent / "train.resolved.yaml"
    if not resolved.exists():
        return None
    return ((yaml.safe_load(resolved.read_text()) or {}).get("data") or {}).get("frames")


def load_evaluator(ckpt: str | Path, frames: int | None = None, device: str | None = None) -> Evaluator:
    """The checkpoint as the trainer built it, in eval mode: fp32 on CPU, bf16 on a GPU."""
    from transformers import AutoTokenizer

    path = checkpoint_dir(ckpt)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = VideoLlava.from_pretrained(str(path), dtype=dtype).to(dev).eval()
    k = frames or trained_frames(path) or 32
    data = DataConfig(shards=str(path), frames=k, image_size=model.config.vision_config.image_size)
    encoder = ChatEncoder(tokenizer, video_token=tokenizer.convert_ids_to_tokens(model.config.video_token_id))
    return Evaluator(model, tokenizer, data, tokens_per_frame(model.config), encoder, dev, str(path))
