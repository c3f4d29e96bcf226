"""CLIP scores with open_clip: per-video embedding (for dedup), aesthetic score, frame-text agreement.

The model loads once per Ray actor (`setup`), on a GPU when one is there, and
encodes a video's frames in batches. Two stages use it:
- `ClipScores`, before the LLM stages:
  `embedding`, the mean of the L2-normalised frame embeddings, normalised again
  (what near-duplicate removal compares across the corpus); `aesthetic`, the
  LAION aesthetic predictor design, a small MLP head on CLIP image embeddings,
  averaged over frames, its weights from `aesthetic_head` (none: no score);
- `CaptionAgreement`, after the caption stage (it needs the captions):
  `frame_text_min` / `frame_text_mean`, the cosine agreement of each caption with
  the frames it describes (a clip caption with the frames inside its time span,
  the whole-video caption with all frames), from
  `meta['captions']` = {"clips": [{"start_s", "end_s", "text"}], "video": {"text"}}.
  A low minimum points at a caption that describes something the frames do not show.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config_run import StageResources
from filters.config import ClipFilterConfig
from pipeline.core.errors import Reason, Verdict, VideoError
from pipeline.core.meta import frame_times
from pipeline.core.stage import Stage
from pipeline.core.task import VideoTask


def _torch():
    import torch

    return torch


def build_aesthetic_head(embed_dim: int) -> Any:
    """The LAION improved-aesthetic-predictor MLP (embed_dim -> 1024 -> 128 -> 64 -> 16 -> 1)."""
    nn = _torch().nn
    return nn.Sequential(
        nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """safetensors or a plain torch state dict; never executes code from the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = _torch().load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class ClipModel:
    """open_clip model + preprocessing + tokenizer + optional aesthetic head, on one device."""

    def __init__(self, cfg: ClipFilterConfig):
        import open_clip

        torch = _torch()
        if cfg.arch_config:
            open_clip.add_model_config(cfg.arch_config)
        if cfg.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device = cfg.device
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            cfg.arch, pretrained=cfg.weights, device=self.device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(cfg.arch)
        self.batch_size = cfg.batch_size
        self.head = None
        if cfg.aesthetic_head:
            dim = self.model.visual.output_dim
            self.head = build_aesthetic_head(dim)
            self.head.load_state_dict(load_state_dict(cfg.aesthetic_head))
            self.head.eval().to(self.device)

    def encode_images(self, jpegs: list[bytes]) -> np.ndarray:
        """L2-normalised image embeddings, one row per JPEG, in batches of `batch_size`."""
        from PIL import Image

        torch = _torch()
        out = []
        with torch.inference_mode():
            for start in range(0, len(jpegs), self.batch_size):
                batch = torch.stack(
                    [self.preprocess(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs[start : start + self.batch_size]]
                ).to(self.device)
                emb = self.model.encode_image(batch).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.visual.output_dim), np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    def aesthetic(self, image_emb: np.ndarray) -> float | None:
        if self.head is None or not len(image_emb):
            return None
        torch = _torch()
        with torch.inference_mode():
            return float(self.head(torch.from_numpy(image_emb).to(self.device)).mean().item())


def video_embedding(frame_emb: np.ndarray) -> np.ndarray:
    mean = frame_emb.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def caption_agreement(
    frame_emb: np.ndarray, times_s: list[float], captions: dict[str, Any], text_emb_fn: Any
) -> list[float]:
    """Cosine of each caption with the mean of the frames it covers (clip captions by span, video caption: all)."""
    items: list[tuple[str, np.ndarray]] = []
    times = np.asarray(times_s, dtype=float)
    for clip in captions.get("clips") or []:
        mask = (times >= float(clip["start_s"])) & (times < float(clip["end_s"]))
        if mask.any() and clip.get("text"):
            items.append((clip["text"], video_embedding(frame_emb[mask])))
    video_text = (captions.get("video") or {}).get("text")
    if video_text:
        items.append((video_text, video_embedding(frame_emb)))
    if not items:
        return []
    texts = text_emb_fn([t for t, _ in items])
    return [float(np.dot(t, v)) for t, (_, v) in zip(texts, items)]


class _ClipStage(Stage):
    """What both CLIP stages share: the model per actor, and the frames of the set they encode."""

    def __init__(self, cfg: ClipFilterConfig, frame_set: str, resources: StageResources | None = None):
        super().__init__(resources)
        self.cfg = cfg
        self.frame_set = frame_set
        self.score_only = cfg.score_only

    def setup(self) -> None:
        self._model = ClipModel(self.cfg)

    def encode_frames(self, task: VideoTask) -> tuple[np.ndarray, list[float]]:
        """Embeddings of at most `max_frames` frames spread over the set, and their times (empty when unknown)."""
        jpegs = task.frames.get(self.frame_set, [])
        if not jpegs:
            raise VideoError(Reason.NO_FRAMES, f"frame set {self.frame_set!r} is empty")
        times = frame_times(task.meta, self.frame_set)
        pick = np.linspace(0, len(jpegs) - 1, min(len(jpegs), self.cfg.max_frames), dtype=int)
        return self._model.encode_images([jpegs[i] for i in pick]), [times[i] for i in pick] if times else []


class ClipScores(_ClipStage):
    name = "clip_scores"
    reads = ("frames",)
    may_read = ("meta.decode",)
    writes = ("meta.scores", "meta.embedding")

    def process(self, task: VideoTask) -> VideoTask:
        frame_emb, _ = self.encode_frames(task)
        task.meta["embedding"] = [round(float(x), 6) for x in video_embedding(frame_emb)]
        scores = task.meta.setdefault("scores", {})
        aesthetic = self._model.aesthetic(frame_emb)
        if aesthetic is None:
            return task
        scores["aesthetic"] = round(aesthetic, 4)
        low = self.cfg.min_aesthetic
        if low is not None and scores["aesthetic"] < low:
            raise Verdict(Reason.LOW_AESTHETIC, f"aesthetic {aesthetic:.3f} < min_aesthetic {low:g}")
        return task


class CaptionAgreement(_ClipStage):
    """Caption-frame agreement: runs after the caption stage, so the captions it checks exist."""

    name = "caption_agreement"
    reads = ("frames", "meta.decode", "meta.captions")
    writes = ("meta.scores",)

    def process(self, task: VideoTask) -> VideoTask:
        if not task.meta.get("captions"):
            return task
        frame_emb, times = self.encode_frames(task)
        agree = caption_agreement(frame_emb, times, task.meta["captions"], self._model.encode_texts) if times else []
        if not agree:
            return task
        scores = task.meta.setdefault("scores", {})
        scores["frame_text_min"] = round(min(agree), 4)
        scores["frame_text_mean"] = round(float(np.mean(agree)), 4)
        low, floor = scores["frame_text_min"], self.cfg.min_frame_text
        if floor is not None and low < floor:
            raise Verdict(Reason.CAPTION_MISMATCH, f"frame_text_min {low:.3f} < min_frame_text {floor:g}")
        return task
