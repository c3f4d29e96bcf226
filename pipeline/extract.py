"""One decode pass over a video for every frame set the run needs.

The union of all sets' frame positions is decoded once; each decoded frame is
resized and JPEG-encoded for every set that wants it and its pixels are
dropped at once, so memory holds JPEG bytes plus one bounded decode batch per
worker, however long the video. The positions are split into contiguous spans
of keyframe groups, one per worker, so the CPUs given to one video decode
different parts of it at the same time.

The configured backend (decord) runs first; the fallback (PyAV) takes over
when it cannot open, index or decode the file, and the result records which
one ran and why.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.config import DecodeConfig, FrameSetConfig, SamplingConfig
from pipeline.decoders import Backend, DecordBackend, PyAVBackend
from pipeline.errors import Reason, VideoError
from pipeline.imageops import encode_jpeg, output_size
from pipeline.records import DecodeResult, FrameSet, VideoInfo
from pipeline.sampling import FrameIndex, SetPlan, plan_frame_set

log = logging.getLogger(__name__)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_positions(positions: np.ndarray, keyframes: np.ndarray, parts: int) -> list[np.ndarray]:
    """Cut sorted unique positions into <= `parts` contiguous spans of whole keyframe groups, balanced by decode work.

    The work of a group is the frames decoded in it: from its keyframe to the
    last wanted position in it.
    """
    if len(positions) == 0:
        return []
    group = np.searchsorted(keyframes, positions, side="right") - 1
    groups, first = np.unique(group, return_index=True)
    parts = max(1, min(parts, len(groups)))
    if parts == 1:
        return [positions]
    last_in_group = positions[np.r_[first[1:], len(positions)] - 1]
    cum = np.cumsum(last_in_group - keyframes[groups] + 1, dtype=np.float64)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="left") + 1
    cuts = np.unique(np.clip(cuts, 1, len(groups) - 1))
    bounds = [0, *first[cuts].tolist(), len(positions)]
    return [positions[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@dataclass(frozen=True)
class _Target:
    set_no: int
    size: tuple[int, int]
    resample: str
    quality: int


def _open(name: str, info: VideoInfo, decode: DecodeConfig, codec_threads: int) -> Backend:
    if name == "decord":
        return DecordBackend(
            info.path,
            rotation_cw=info.rotation,
            codec_threads=codec_threads,
            display_size=(info.width, info.height),
            batch_bytes=decode.batch_bytes,
        )
    return PyAVBackend(info.path, rotation_cw=info.rotation, codec_threads=codec_threads)


def _check_index(name: str, index: FrameIndex, info: VideoInfo, tolerance: float) -> None:
    """The decoder must see the frames the container declares; fewer means a cut file, a mismatch a bad seek table."""
    if not info.num_frames_exact:
        return
    declared, seen = info.num_frames, index.num_frames
    if seen < declared * (1 - tolerance):
        raise VideoError(Reason.TRUNCATED, f"{name} finds {seen} of the {declared} frames the header declares")
    if seen > declared * (1 + tolerance):
        raise VideoError(Reason.DECODE_FAILED, f"{name} counts {seen} frames, the header {declared}")


def _decode_span(
    backend: Backend, positions: np.ndarray, wants: dict[int, list[_Target]]
) -> dict[int, list[tuple[int, bytes]]]:
    out: dict[int, list[tuple[int, bytes]]] = {}
    for frame in backend.read(positions):
        out[frame.index] = [
            (t.set_no, encode_jpeg(frame.rgb(*t.size, t.resample), t.quality)) for t in wants[frame.index]
        ]
    return out


def _extract_with(
    name: str,
    info: VideoInfo,
    specs: list[FrameSetConfig],
    decode: DecodeConfig,
    num_frames_override: int | None,
) -> tuple[FrameIndex, list[SetPlan], dict[int, list[tuple[int, bytes]]]]:
    threads = decode.threads or available_cpus()
    first = _open(name, info, decode, codec_threads=threads)
    try:
        index = first.frame_index()
        _check_index(name, index, info, decode.frame_count_tolerance)
        plans = [plan_frame_set(spec, index, num_frames_override) for spec in specs]
        wants: dict[int, list[_Target]] = {}
        for set_no, (spec, plan) in enumerate(zip(specs, plans)):
            target = _Target(set_no, output_size(info.width, info.height, spec.resize), spec.resize.resample, spec.jpeg_quality)
            for pos in np.unique(plan.indices).tolist():
                wants.setdefault(pos, []).append(target)
        positions = np.array(sorted(wants), dtype=np.int64)
        spans = split_positions(positions, index.keyframes, threads)
        if len(spans) <= 1:
            return index, plans, _decode_span(first, positions, wants)
        results: dict[int, list[tuple[int, bytes]]] = {}
        with ThreadPoolExecutor(len(spans), thread_name_prefix=f"decode-{name}") as pool:
            futures = [pool.submit(_decode_in_worker, name, info, decode, first, span, wants) for span in spans]
            for fut in futures:
                results.update(fut.result())
        return index, plans, results
    finally:
        first.close()


def _decode_in_worker(
    name: str, info: VideoInfo, decode: DecodeConfig, indexed: Backend, span: np.ndarray, wants: dict[int, list[_Target]]
) -> dict[int, list[tuple[int, bytes]]]:
    backend = _open(name, info, decode, codec_threads=1)
    try:
        if isinstance(backend, PyAVBackend) and isinstance(indexed, PyAVBackend):
            backend.share_index(indexed)  # the demux pass is done once, not once per worker
        return _decode_span(backend, span, wants)
    finally:
        backend.close()


def _assemble(
    specs: list[FrameSetConfig], plans: list[SetPlan], index: FrameIndex, info: VideoInfo, results: dict[int, list[tuple[int, bytes]]]
) -> dict[str, FrameSet]:
    sets: dict[str, FrameSet] = {}
    for set_no, (spec, plan) in enumerate(zip(specs, plans)):
        jpegs = [dict(results[pos])[set_no] for pos in plan.indices.tolist()]
        errors = plan.errors(index)
        width, height = output_size(info.width, info.height, spec.resize)
        sets[spec.name] = FrameSet(
            name=spec.name,
            mode=spec.mode,
            seek=spec.seek,
            indices=plan.indices.tolist(),
            timestamps_s=[round(t, 6) for t in plan.timestamps(index).tolist()],
            target_times_s=[round(t, 6) for t in plan.target_times_s.tolist()],
            jpegs=jpegs,
            width=width,
            height=height,
            max_timestamp_error_s=float(errors.max()) if len(errors) else 0.0,
            mean_timestamp_error_s=float(errors.mean()) if len(errors) else 0.0,
        )
    return sets


def extract_frames(
    info: VideoInfo,
    sampling: SamplingConfig,
    decode: DecodeConfig,
    num_frames_override: int | None = None,
) -> DecodeResult:
    """Decode `info.path` once and return every configured frame set; VideoError on failure, never anything else."""
    order = [decode.backend]
    if decode.fallback != "none" and decode.fallback != decode.backend:
        order.append(decode.fallback)
    fallback_reason: str | None = None
    for attempt, name in enumerate(order):
        start = time.perf_counter()
        try:
            index, plans, results = _extract_with(name, info, sampling.sets, decode, num_frames_override)
        except Exception as e:
            err = e if isinstance(e, VideoError) else VideoError(Reason.DECODE_FAILED, f"{type(e).__name__}: {e}")
            if not isinstance(e, VideoError):
                log.warning("unexpected %s decoding %s with %s", type(e).__name__, info.path, name, exc_info=True)
            if attempt == len(order) - 1:
                if fallback_reason:
                    err = VideoError(err.reason, f"{name}: {err.detail} (after {fallback_reason})")
                raise err from None
            fallback_reason = f"{name}: {err}"
            log.info("falling back from %s for %s: %s", name, info.path, err)
            continue
        sets = _assemble(sampling.sets, plans, index, info, results)
        return DecodeResult(
            source=info.path,
            decoder=name,
            fallback_reason=fallback_reason,
            num_frames=index.num_frames,
            avg_fps=index.avg_fps,
            frames_decoded=len(results),
            decode_seconds=time.perf_counter() - start,
            sets=sets,
        )
    raise VideoError(Reason.DECODE_FAILED, "no decoder configured")  # unreachable: order is never empty
