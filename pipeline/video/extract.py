"""One decode pass over a video for every frame set the run needs.

The union of all sets' frame positions is decoded once; each decoded frame is
resized and JPEG-encoded for every set that wants it and its pixels are
dropped at once, so memory holds JPEG bytes plus one bounded decode batch per
worker, however long the video. The positions are split into contiguous spans
of keyframe groups, one per worker, so the CPUs given to one video decode
different parts of it at the same time.

Every path is exact or refuses (see `decode_paths`): PyAV by packet times
(the default), PyAV by decode order when packet times cannot name the frames,
and decord only where its guard proves it (`decode_decord`). The result
records which path ran and why the ones before it did not.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from pipeline.video.config_video import DecodeConfig, FrameSetConfig, SamplingConfig
from pipeline.video.decode_decord import container_problem
from pipeline.video.decode_log import DecoderLog, captured
from pipeline.video.decoders import Backend, DecordBackend, PyAVBackend
from pipeline.core.errors import NotExact, Reason, VideoError
from pipeline.video.imageops import encode_jpeg, output_size
from pipeline.video.opened import Identity, OpenedSource, SourceRules, open_source
from pipeline.video.paths import indirect_format
from pipeline.core.records import DecodeResult, FrameSet, VideoInfo
from pipeline.video.sampling import FrameIndex, SetPlan, plan_frame_set

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
    scaler: str
    quality: int
    subsampling: str


# Reasons that no other decode path can change: the file itself is short, cut or degenerate.
_FINAL = {Reason.TRUNCATED, Reason.SINGLE_FRAME, Reason.TOO_FEW_DISTINCT_FRAMES}


def decode_paths(decode: DecodeConfig) -> list[str]:
    """The decode paths tried in order: decord only when asked for; PyAV by packet times, then by decode order."""
    paths = ["decord"] if decode.backend == "decord" else []
    if decode.backend == "pyav" or decode.fallback == "pyav":
        paths += ["pyav", "pyav-sequential"]
    return paths


def _probe_allowed_indirect(info: VideoInfo) -> bool:
    """A concat list or playlist reaches the decoder only if the probe accepted it (probe.allow_indirect)."""
    return indirect_format(info.container) is not None


def _open(name: str, info: VideoInfo, decode: DecodeConfig, codec_threads: int, log: DecoderLog) -> Backend:
    if name == "decord":
        if info.codec not in decode.decord_codecs:
            raise NotExact(f"decord is not proven exact on {info.codec} (decode.decord_codecs)")
        problem = container_problem(info.container)
        if problem:
            raise NotExact(problem)
        reference = PyAVBackend(info.path, rotation_cw=info.rotation, index_by="packets", log=log,
                                allow_indirect=_probe_allowed_indirect(info))
        try:
            index = reference.frame_index()
        finally:
            reference.close()
        if reference.open_gop:
            raise NotExact("decord is not exact across open GOPs (frames shown before their keyframe)")
        backend = DecordBackend(info.path, rotation_cw=info.rotation, codec_threads=codec_threads,
                                display_size=(info.width, info.height), batch_bytes=decode.batch_bytes, log=log)
        try:
            backend.adopt_index(index)
        except BaseException:
            backend.close()
            raise
        return backend
    index_by = "decode" if name == "pyav-sequential" else "packets"
    return PyAVBackend(info.path, rotation_cw=info.rotation, codec_threads=codec_threads, index_by=index_by, log=log,
                       allow_indirect=_probe_allowed_indirect(info), skip_unwanted=decode.skip_unwanted)


def _open_worker(name: str, info: VideoInfo, decode: DecodeConfig, indexed: Backend, log: DecoderLog) -> Backend:
    """Another instance for a decode worker, sharing the first one's (already checked) index."""
    if name == "decord":
        backend = DecordBackend(info.path, rotation_cw=info.rotation, codec_threads=1,
                                display_size=(info.width, info.height), batch_bytes=decode.batch_bytes, log=log)
    else:
        backend = PyAVBackend(info.path, rotation_cw=info.rotation, codec_threads=1,
                              index_by="decode" if name == "pyav-sequential" else "packets", log=log,
                              allow_indirect=_probe_allowed_indirect(info), skip_unwanted=decode.skip_unwanted)
    backend.share_index(indexed)
    return backend


def check_index(index: FrameIndex, info: VideoInfo, decode: DecodeConfig) -> float | None:
    """Compare what decodes with what the header declares; return the declared duration when the file is cut short.

    Fewer frames than an exact header count, or a decodable span well short
    of the declared video duration, is a cut file: `truncated`, unless
    `decode.truncated: keep` (then the real span is used and reported). More
    frames than the header counts means this path sees frames that are not
    there: `NotExact`, so the next path decides.
    """
    tol = decode.frame_count_tolerance
    declared, seen = info.num_frames, index.num_frames
    if info.num_frames_exact and seen > declared * (1 + tol) + 1:
        raise NotExact(f"decoder counts {seen} frames, the header {declared}")
    frame_s = 1.0 / index.avg_fps if index.avg_fps > 0 else 0.0
    slack = max(tol * info.duration_s, 2 * frame_s) + (0.0 if info.duration_from_stream else 1.0)
    short_count = info.num_frames_exact and seen < declared * (1 - tol)
    short_span = index.duration_s < info.duration_s - slack
    if not (short_count or short_span):
        return None
    what = (f"{seen} of the {declared} frames the header declares" if short_count
            else f"{index.duration_s:.2f}s of the {info.duration_s:.2f}s the header declares")
    if decode.truncated == "reject":
        raise VideoError(Reason.TRUNCATED, f"the video stream decodes {what}")
    return info.duration_s


def _check_degenerate(index: FrameIndex, specs: list[FrameSetConfig], plans: list[SetPlan], decode: DecodeConfig) -> None:
    if index.num_frames < decode.min_frames:
        raise VideoError(Reason.SINGLE_FRAME if index.num_frames == 1 else Reason.TOO_FEW_DISTINCT_FRAMES,
                         f"the decoder finds {index.num_frames} frame(s) (decode.min_frames {decode.min_frames})")
    for spec, plan in zip(specs, plans):
        if spec.min_distinct <= 0 or len(plan.indices) == 0:
            continue
        picked = plan.picks(spec.num_frames)  # a union set: the num_frames stage's own frames
        distinct = len(np.unique(picked))
        if distinct < spec.min_distinct * len(picked):
            raise VideoError(
                Reason.TOO_FEW_DISTINCT_FRAMES,
                f"set {spec.name}: {distinct} distinct of {len(picked)} frames from {index.num_frames} "
                f"(min_distinct {spec.min_distinct:g})",
            )


def _decode_span(
    backend: Backend, positions: np.ndarray, wants: dict[int, list[_Target]]
) -> dict[int, list[tuple[int, bytes]]]:
    out: dict[int, list[tuple[int, bytes]]] = {}
    for frame in backend.read(positions):
        out[frame.index] = [
            (t.set_no, encode_jpeg(frame.rgb(*t.size, t.resample, t.scaler), t.quality, t.subsampling))
            for t in wants[frame.index]
        ]
    missing = set(positions.tolist()) - set(out)
    if missing:  # a backend that returns fewer frames than asked is not exact
        raise NotExact(f"{backend.name} returned no frame for {len(missing)} position(s), first {min(missing)}")
    return out


@dataclass
class _Extracted:
    index: FrameIndex
    plans: list[SetPlan]
    results: dict[int, list[tuple[int, bytes]]]
    declared_duration_s: float | None  # set when the file is shorter than its header says (decode.truncated: keep)


def _extract_with(
    name: str,
    info: VideoInfo,
    specs: list[FrameSetConfig],
    decode: DecodeConfig,
    num_frames_override: int | None,
    log: DecoderLog,
) -> _Extracted:
    threads = decode.threads or available_cpus()
    first = _open(name, info, decode, threads, log)
    try:
        index = first.frame_index()
        declared = check_index(index, info, decode)
        plans = [plan_frame_set(spec, index, num_frames_override) for spec in specs]
        _check_degenerate(index, specs, plans, decode)
        wants: dict[int, list[_Target]] = {}
        for set_no, (spec, plan) in enumerate(zip(specs, plans)):
            target = _Target(set_no, output_size(info.width, info.height, spec.resize), spec.resize.resample,
                             spec.resize.scaler, spec.jpeg_quality, spec.jpeg_subsampling)
            for pos in np.unique(plan.indices).tolist():
                wants.setdefault(pos, []).append(target)
        positions = np.array(sorted(wants), dtype=np.int64)
        spans = split_positions(positions, index.keyframes, threads)
        if len(spans) <= 1:
            return _Extracted(index, plans, _decode_span(first, positions, wants), declared)
        results: dict[int, list[tuple[int, bytes]]] = {}
        with ThreadPoolExecutor(len(spans), thread_name_prefix=f"decode-{name}") as pool:
            futures = [pool.submit(_decode_in_worker, name, info, decode, first, span, wants, log) for span in spans]
            for fut in futures:
                results.update(fut.result())
        return _Extracted(index, plans, results, declared)
    finally:
        first.close()


def _decode_in_worker(
    name: str, info: VideoInfo, decode: DecodeConfig, indexed: Backend, span: np.ndarray,
    wants: dict[int, list[_Target]], log: DecoderLog,
) -> dict[int, list[tuple[int, bytes]]]:
    backend = _open_worker(name, info, decode, indexed, log)
    try:
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
            mode=plan.mode,
            seek=spec.seek,
            indices=plan.indices.tolist(),
            timestamps_s=[round(t, 6) for t in plan.timestamps(index).tolist()],
            target_times_s=[round(t, 6) for t in plan.target_times_s.tolist()],
            jpegs=jpegs,
            width=width,
            height=height,
            max_timestamp_error_s=float(errors.max()) if len(errors) else 0.0,
            mean_timestamp_error_s=float(errors.mean()) if len(errors) else 0.0,
            stages={str(k): p.tolist() for k, p in plan.stages.items()} if plan.stages else None,
        )
    return sets


def extract_frames(
    info: VideoInfo,
    sampling: SamplingConfig,
    decode: DecodeConfig,
    num_frames_override: int | None = None,
    rules: SourceRules | None = None,
) -> DecodeResult:
    """Decode `info.path` once and return every configured frame set; VideoError on failure, never anything else.

    The source is opened once (`open_source`: confined by `rules`, and it must
    be the file the probe read, `info.file_identity`); every decoder reads that
    open file through `/proc/self/fd/N`, never the name again. The paths of
    `decode_paths` are tried in order; a path moves on to the next when it
    cannot open, index or decode the file or cannot prove a frame (`NotExact`).
    The result records the path that made the frames and why the ones before
    it did not.
    """
    with open_source(info.path, rules, Identity.from_list(info.file_identity)) as source:
        return _extract_opened(info, source, sampling, decode, num_frames_override)


def _extract_opened(
    info: VideoInfo, source: OpenedSource, sampling: SamplingConfig, decode: DecodeConfig, num_frames_override: int | None
) -> DecodeResult:
    reading = replace(info, path=source.path)  # what the decoders open: the open file, not its name
    order = decode_paths(decode)
    if not order:
        raise VideoError(Reason.DECODE_FAILED, "no decoder configured")
    decoder_log = DecoderLog(info.path, decode.log_dir)
    passed: list[str] = []
    for attempt, name in enumerate(order):
        start = time.perf_counter()
        try:
            with captured(decoder_log):
                done = _extract_with(name, reading, sampling.sets, decode, num_frames_override, decoder_log)
        except Exception as e:
            err = e if isinstance(e, VideoError) else VideoError(Reason.DECODE_FAILED, f"{type(e).__name__}: {e}")
            if not isinstance(e, VideoError):
                log.warning("unexpected %s decoding %s with %s", type(e).__name__, info.path, name, exc_info=True)
            final = err.reason in _FINAL or attempt == len(order) - 1
            if name == "pyav" and not isinstance(err, NotExact):
                final = True  # decode order only helps where packet times could not name the frames
            if final:
                detail = source.shown(err.detail if "(decoder:" in err.detail else err.detail + decoder_log.first_suffix())
                if passed:
                    detail = f"{name}: {detail} (after {'; '.join(passed)})"
                raise VideoError(err.reason, detail) from None
            passed.append(source.shown(f"{name}: {err}"))
            log.info("moving on from %s for %s: %s", name, info.path, err)
            continue
        sets = _assemble(sampling.sets, done.plans, done.index, info, done.results)
        return DecodeResult(
            source=info.path,
            decoder=name,
            fallback_reason="; ".join(passed) or None,
            num_frames=done.index.num_frames,
            avg_fps=done.index.avg_fps,
            duration_s=done.index.duration_s,
            declared_duration_s=done.declared_duration_s,
            frames_decoded=len(done.results),
            decode_seconds=time.perf_counter() - start,
            sets=sets,
            keyframe_interval_s=done.index.keyframe_interval_s,
        )
    raise AssertionError("unreachable: the last path either returns or raises")
