"""The video stages: fetch (a remote video to node-local scratch), probe (metadata and codec preflight) and
one-pass decode and sampling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.core.storage import is_remote
from pipeline.video.config_video import DecodeConfig, FetchConfig, LimitsConfig, ProbeConfig, SamplingConfig
from pipeline.video.fetch import fetch, is_http
from pipeline.video.scratch import scratch_dir
from pipeline.core.config_run import StageResources
from pipeline.core.errors import Reason, VideoError
from pipeline.video.extract import available_cpus, extract_frames
from pipeline.video.opened import SourceRules
from pipeline.video.probe import preflight
from pipeline.core.records import VideoInfo
from pipeline.core.stage import Stage
from pipeline.core.task import VideoTask
from pipeline.video.watchdog import CallOverMemory, CallTimeout, ChildDied, WatchedProcess


SCRATCH_PREFIX = "prolongvid-fetch-"


def local_copy(task: VideoTask) -> str | None:
    """The node-local copy of a remote video the fetch stage made, if any."""
    return (task.meta.get("fetched") or {}).get("path")


class FetchStage(Stage):
    """A remote source (an object-store URL; an http(s) URL when `input.http.enabled`) copied to this worker's
    scratch for the probe and the decode, which read files; local sources pass untouched. The copy lives until
    the video leaves the pool (`release`); a killed worker's scratch is swept by the next run on the node."""

    name = "fetch"
    may_read = ("meta.listing",)
    writes = ("meta.fetched",)

    def __init__(self, cfg: FetchConfig, http: bool = False, allowed_prefixes: tuple[str, ...] = (),
                 resources: StageResources | None = None):
        super().__init__(resources)
        self.cfg, self.http, self.allowed_prefixes = cfg, http, allowed_prefixes

    def setup(self) -> None:
        self._scratch = scratch_dir(SCRATCH_PREFIX, self.cfg.scratch_dir or None)

    def teardown(self) -> None:
        if getattr(self, "_scratch", None) is not None:
            self._scratch.cleanup()

    def process(self, task: VideoTask) -> VideoTask:
        url = task.fetch_url or task.source
        if not (is_remote(url) or is_http(url)):
            return task
        if is_http(url) and not self.http:
            raise VideoError(Reason.BAD_SOURCE, f"{url}: http(s) sources need input.http.enabled")
        if self.allowed_prefixes and not url.startswith(self.allowed_prefixes):
            raise VideoError(Reason.OUTSIDE_ALLOWED_ROOTS, f"{url}: outside input.allowed_roots")
        listing = task.meta.get("listing") or {}
        dest = Path(self._scratch.name) / f"{task.key}{Path(url.split('?')[0]).suffix}"
        got = fetch(url, dest, self.cfg, listing.get("size"), listing.get("etag", ""), self.allowed_prefixes)
        task.meta["fetched"] = {"path": str(got.path), "bytes": got.bytes}
        task.fetch_url = ""  # the signed URL goes no further than the fetch
        return task

    def release(self, task: VideoTask) -> None:
        copy = local_copy(task)
        if copy:
            Path(copy).unlink(missing_ok=True)
            task.meta.pop("fetched", None)


class ProbeStage(Stage):
    """ffprobe metadata plus the preflight limits; the result lands in `meta['video']`.

    The source is opened and confined (`rules`) when it is read, not only when it was listed; the file's identity
    goes into `meta['video']` for the decode stage to check. A run gives it the probe settings of its plan
    (no keyframe scan: the decode stage records the spacing from its index of the whole video).
    """

    name = "probe"
    may_read = ("meta.fetched",)
    writes = ("meta.video",)

    def __init__(self, probe: ProbeConfig, limits: LimitsConfig, resources: StageResources | None = None,
                 rules: SourceRules | None = None):
        super().__init__(resources)
        self.rules = rules or SourceRules()
        self.probe_cfg = probe
        self.limits = limits

    def process(self, task: VideoTask) -> VideoTask:
        copy = local_copy(task)
        if copy is None:
            info = preflight(task.source, self.probe_cfg, self.limits, self.rules)
        else:  # our own copy: the URL was checked against the allowed prefixes when it was fetched
            info = dataclasses.replace(preflight(copy, self.probe_cfg, self.limits), path=task.source)
        task.meta["video"] = info.to_dict()
        return task


class DecodeStage(Stage):
    """Decode each video once into every configured frame set (JPEG bytes), in a watched child process.

    A run gives it the decode settings of its plan (threads: the CPUs the video stage reserves, unless set)."""

    name = "decode"
    reads = ("meta.video",)
    may_read = ("meta.num_frames", "meta.fetched")
    writes = ("frames", "meta.decode", "meta.video")  # the decoder's frame count and duration replace the header's

    def __init__(self, sampling: SamplingConfig, decode: DecodeConfig, resources: StageResources | None = None,
                 rules: SourceRules | None = None):
        super().__init__(resources)
        self.sampling = sampling
        self.rules = rules or SourceRules()  # the decoder opens the source again: confined, and the probe's file
        self.decode = decode

    def setup(self) -> None:
        self._child = WatchedProcess() if self.decode.isolate else None
        if self._child is not None:  # start it and import the decoders now, not on the first video
            self._child.call(available_cpus, timeout_s=300, max_rss_mb=1 << 20)

    def teardown(self) -> None:
        if getattr(self, "_child", None) is not None:
            self._child.stop()

    def process(self, task: VideoTask) -> VideoTask:
        info = VideoInfo.from_dict(task.meta["video"])
        override = task.meta.get("num_frames")
        copy = local_copy(task)
        rules = self.rules if copy is None else SourceRules()
        args = (info if copy is None else dataclasses.replace(info, path=copy), self.sampling, self.decode, override, rules)
        if self._child is None:
            result = extract_frames(*args)
        else:
            try:
                result = self._child.call(
                    extract_frames, *args, timeout_s=self.decode.timeout_s, max_rss_mb=self.decode.max_memory_mb
                )
            except CallTimeout as e:
                raise VideoError(Reason.DECODE_TIMEOUT, str(e)) from None
            except CallOverMemory as e:
                raise VideoError(Reason.DECODE_MEMORY, str(e)) from None
            except ChildDied as e:
                raise VideoError(Reason.DECODE_CRASHED, str(e)) from None
        task.meta["decode"] = result.meta()
        if copy is not None:
            task.meta["decode"]["source"] = task.source
        # From here on the decoder's index is the truth about the video: what decodes, not what the header said.
        video = task.meta["video"]
        video.update(num_frames=result.num_frames, num_frames_exact=True, duration_s=round(result.duration_s, 6),
                     keyframe_interval_s=result.keyframe_interval_s)
        if result.declared_duration_s is not None:
            video["declared_duration_s"] = result.declared_duration_s
        task.frames = {name: list(fs.jpegs) for name, fs in result.sets.items()}
        return task

