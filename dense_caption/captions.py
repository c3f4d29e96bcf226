"""Hierarchical dense captions (LLaVA-Video's recipe): clip captions -> segment summaries -> one video caption.

A clip caption every `clip_s` seconds comes from that window's frames plus the
last few clip captions as context; a summary every `summary_s` seconds comes
from its clips' captions plus the previous summary; the video caption comes
from the summaries. Every caption carries its time span, and the clip spans
tile the video from 0 to its duration with no gap. Within a video the steps
are sequential (each needs the one before); the stage runs many videos at once
so the server still sees a full batch.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from dense_caption.client import ChatBackend, ChatRequest, LLMFailure, Usage, complete
from dense_caption.config import LLMConfig
from dense_caption.media import image_parts, video_part
from dense_caption.templates import Prompts, mmss, span
from pipeline.core.errors import Reason


def windows(duration_s: float, step_s: float) -> list[tuple[float, float]]:
    """[start, end) windows of `step_s` tiling [0, duration]; a last sliver under a third of a step joins the one before."""
    if duration_s <= 0:
        return []
    count = max(1, math.ceil(duration_s / step_s - 1e-9))
    bounds = [min(i * step_s, duration_s) for i in range(count)] + [duration_s]
    spans = list(zip(bounds[:-1], bounds[1:]))
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < step_s / 3:
        spans[-2] = (spans[-2][0], spans[-1][1])
        spans.pop()
    return [(round(a, 3), round(b, 3)) for a, b in spans]


def frames_in(times: list[float], start: float, end: float, last: bool, limit: int) -> list[int]:
    """Indices of the frames inside [start, end) (end included for the last window), at most `limit`, evenly picked.

    A window with no frame of its own (a sparse frame set) gets the frame nearest its middle.
    """
    inside = [i for i, t in enumerate(times) if start <= t < end or (last and t == end)]
    if not inside and times:
        middle = (start + end) / 2
        inside = [min(range(len(times)), key=lambda i: abs(times[i] - middle))]
    if len(inside) > limit:
        inside = [inside[round(k * (len(inside) - 1) / (limit - 1))] for k in range(limit)] if limit > 1 else inside[:1]
    return inside


def caption_schema(max_chars: int, pattern: str | None) -> dict[str, Any]:
    # xgrammar takes a pattern or length bounds on a string, not both: the pattern then bounds the length
    text: dict[str, Any] = {"type": "string", "pattern": pattern} if pattern else {"type": "string", "maxLength": max_chars}
    return {"type": "object", "properties": {"caption": text}, "required": ["caption"], "additionalProperties": False}


def _not_blank(value: Any) -> None:
    if not str(value.get("caption", "")).strip():
        raise LLMFailure(Reason.LLM_EMPTY, "blank caption")


@dataclass
class CaptionJob:
    """Everything one video's captioning needs; `run` returns the `meta['captions']` dict."""

    cfg: LLMConfig
    prompts: Prompts
    backend: ChatBackend
    usage: Usage

    async def ask(self, name: str, content: Any, max_tokens: int) -> str:
        c = self.cfg.captions
        request = ChatRequest(
            messages=[{"role": "system", "content": self.prompts.system}, {"role": "user", "content": content}],
            max_tokens=max_tokens,
            schema=caption_schema(c.max_chars, c.text_pattern),
            name=name,
            temperature=self.cfg.temperature,
            seed=self.cfg.seed,
        )
        answer = await complete(self.backend, request, self.cfg.retry, self.usage, _not_blank)
        return str(answer["caption"]).strip()

    async def run(self, duration_s: float, jpegs: list[bytes], times: list[float], fps: float) -> dict[str, Any]:
        c = self.cfg.captions
        if not jpegs:
            raise LLMFailure(Reason.NO_FRAMES, f"frame set {c.frame_set!r} is empty")
        duration = mmss(duration_s)
        clips: list[dict[str, Any]] = []
        spans = windows(duration_s, c.clip_s)
        for n, (start, end) in enumerate(spans):
            picked = frames_in(times, start, end, n == len(spans) - 1, c.max_frames_per_clip)
            frames = [jpegs[i] for i in picked]
            recent = clips[-c.context_clips :] if c.context_clips else []
            context = "\n".join(f"{x['span']} {x['text']}" for x in recent) or "(this is the start of the video)"
            text = self.prompts.render(
                "clip_caption", num_frames=len(frames), span=span(start, end), duration=duration, context=context
            )
            # JPEG resizing and base64 run off the event loop, which serves every video's requests
            if c.media == "video":
                media = [await asyncio.to_thread(video_part, frames, fps, c.image_size)]
            else:
                media = await asyncio.to_thread(image_parts, frames, c.image_size)
            content = [*media, {"type": "text", "text": text}]
            caption = await self.ask(f"clip {span(start, end)}", content, c.max_tokens_clip)
            clips.append({"start_s": start, "end_s": end, "span": span(start, end), "text": caption, "frames": len(frames)})

        segments: list[dict[str, Any]] = []
        for start, end in windows(duration_s, c.summary_s):
            members = [x for x in clips if x["start_s"] >= start - 1e-6 and x["start_s"] < end - 1e-6]
            members = members or [min(clips, key=lambda x: abs(x["start_s"] - start))]
            context = f"{segments[-1]['span']} {segments[-1]['text']}" if segments else "(this is the start of the video)"
            seg_start, seg_end = members[0]["start_s"], members[-1]["end_s"]
            text = self.prompts.render(
                "segment_summary",
                span=span(seg_start, seg_end),
                duration=duration,
                context=context,
                captions="\n".join(f"{x['span']} {x['text']}" for x in members),
            )
            summary = await self.ask(f"summary {span(seg_start, seg_end)}", text, c.max_tokens_summary)
            segments.append({"start_s": seg_start, "end_s": seg_end, "span": span(seg_start, seg_end), "text": summary})

        text = self.prompts.render(
            "video_caption", duration=duration, captions="\n".join(f"{x['span']} {x['text']}" for x in segments)
        )
        video = await self.ask("video caption", text, c.max_tokens_video)
        return {
            "clips": clips,
            "segments": segments,
            "video": {"start_s": 0.0, "end_s": round(duration_s, 3), "span": span(0, duration_s), "text": video},
        }


def dense_caption_text(captions: dict[str, Any]) -> str:
    """The caption levels as the text QA is generated from: the video caption, then summaries and clips with spans."""
    lines = [f"Whole video {captions['video']['span']}: {captions['video']['text']}", "", "Segments:"]
    lines += [f"{x['span']} {x['text']}" for x in captions.get("segments", [])]
    lines += ["", "Clips:"]
    lines += [f"{x['span']} {x['text']}" for x in captions.get("clips", [])]
    return "\n".join(lines)
