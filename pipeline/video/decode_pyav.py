"""PyAV decoding that proves every frame it returns is the frame asked for.

Two ways to find frame n, both exact:
- `packets` (the fast one): one demux pass lists every shown frame's
  presentation time (packets an edit list hides are left out); reading seeks
  to the keyframe before a target only across keyframe gaps and returns the
  decoded frame whose presentation time equals the target's. A seek that
  lands late (MPEG-TS seeks by byte estimate) is retried from earlier
  keyframes, then from the start. Files whose packets cannot name their frames
  (a packet without a time, two frames at one time) refuse this way.
- `decode`: frame n is the n-th frame the decoder outputs from the start, as
  ffmpeg counts; the index comes from a full decode pass and reading decodes
  from the start again. Twice the work, used only when `packets` cannot prove
  a frame.
Either way a frame that cannot be proven raises `NotExact`; nothing is guessed.

Reading by `packets` with `skip_unwanted`, the decoder discards every frame
that is neither wanted nor a reference of another frame (libavcodec's
`skip_frame` at NONREF, set packet by packet: a wanted frame's packet is
decoded whole). Only codecs where a non-reference frame can never be used by
another frame do so: H.264 (nal_ref_idc 0) in MP4/MOV, Matroska/WebM and FLV,
where a packet is one frame under its own time (proven on the identity
corpus; MPEG-TS is not). A wanted
frame that does not come out is caught by its presentation time as before;
skipping is then turned off for the file and the span read again.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.video.decode_log import DecoderLog
from pipeline.core.errors import NotExact, Reason, VideoError
from pipeline.video.frames import frame_rgb
from pipeline.video.paths import indirect_format
from pipeline.video.sampling import FrameIndex

_RESEEK_STEPS = (1, 4, 16)  # keyframes further back to try after a late landing, before the start
# Decoders whose AVDISCARD_NONREF drops only frames no other frame refers to, proven on the identity corpus:
# `skip_unwanted` there only. Not: HEVC (a sub-layer non-reference picture may serve a higher temporal layer),
# VP9 and AV1 (not proven), MPEG-2 (a wanted frame did not come out in MPEG-TS).
SKIP_CODECS = frozenset({"h264"})
# Containers whose packets are whole frames under their own presentation time (in MPEG-TS a parser cuts the
# stream into frames, and a wanted frame's packet did not carry its time).
SKIP_CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm", "flv"})


class AVFrame:
    """A decoded PyAV frame, converted to upright RGB only when asked."""

    __slots__ = ("index", "_frame", "_rotation")

    def __init__(self, index: int, frame, rotation_cw: int):
        self.index = index
        self._frame = frame
        self._rotation = rotation_cw

    def rgb(self, width: int, height: int, resample: str, scaler: str = "swscale") -> np.ndarray:
        return frame_rgb(self._frame, width, height, resample, self._rotation, scaler)


class PyAVBackend:
    """PyAV with per-frame proof: by packet times and seeks (`packets`) or by decode order (`decode`)."""

    def __init__(self, path: str, rotation_cw: int = 0, codec_threads: int = 1, index_by: str = "packets",
                 log: DecoderLog | None = None, allow_indirect: bool = False, skip_unwanted: bool = False):
        import av

        self._av = av
        self._path = path
        self._rotation = rotation_cw
        self._threads = codec_threads
        self.index_by = index_by
        self.allow_indirect = allow_indirect  # only when the probe accepted such a file (probe.allow_indirect)
        self.name = "pyav" if index_by == "packets" else "pyav-sequential"
        self.log = log or DecoderLog()
        self._container = None
        self._stream = None
        self._open()
        self._raw_pts: np.ndarray | None = None
        self._index: FrameIndex | None = None
        self.packet_errors = 0
        self.open_gop = False  # set by the packet index: some GOP shows frames before its keyframe
        self.skip_unwanted = skip_unwanted
        self._wanted: set[int] | None = None  # while reading: raw pts of the wanted frames, the rest may be discarded
        self.frames_decoded = 0  # frames the decoder output (a discarded one is never output)
        self.skip_fallbacks = 0  # spans read again without skipping, because a wanted frame did not come out

    # ------------------------------------------------------------ container

    def _open(self) -> None:
        av = self._av
        self.close()
        try:
            self._container = av.open(self._path, options=self.log.open_options())
        except av.error.FFmpegError as e:
            raise VideoError(Reason.NOT_MEDIA, f"pyav cannot open: {e}") from None
        indirect = indirect_format(self._container.format.name or "")
        if indirect and not self.allow_indirect:
            self._container.close()
            raise VideoError(Reason.INDIRECT_INPUT, f"a {indirect} file pulls in other inputs")
        videos = [s for s in self._container.streams.video if not _is_cover_art(s)]
        if not videos:
            self._container.close()
            raise VideoError(Reason.NO_VIDEO_STREAM, "pyav finds no video stream")
        self._stream = videos[0]
        if self._threads > 1:
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = self._threads

    def _frames(self) -> Iterator:
        """Decoded frames from the container's position on; a packet that fails to decode is skipped and counted."""
        av = self._av
        stream = self._stream
        context = stream.codec_context
        if self._wanted is None and context.skip_frame != "DEFAULT":
            context.skip_frame = "DEFAULT"
        try:
            for packet in self._container.demux(stream):
                wanted = self._wanted
                if wanted is not None:  # frames no set wants and no frame refers to are never decoded
                    context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                try:
                    for frame in stream.decode(packet):
                        self.frames_decoded += 1
                        yield frame
                except av.error.InvalidDataError as e:
                    self.packet_errors += 1
                    self.log.note(f"packet skipped: {e}")
        except av.error.FFmpegError as e:  # a read error: the frames so far are all there is
            self.log.note(f"read stopped: {e}")

    # ------------------------------------------------------------ index

    def frame_index(self) -> FrameIndex:
        if self._index is None:
            if self.index_by == "packets":
                self._raw_pts, self._index = self._packet_index()
            else:
                self._raw_pts, self._index = self._decoded_index()
        return self._index

    def share_index(self, other: "PyAVBackend") -> None:
        """Reuse another instance's index pass over the same file."""
        self._index = other.frame_index()
        self._raw_pts = other._raw_pts
        self.open_gop = other.open_gop

    def _avg_fps(self, pts_s: np.ndarray) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate:
            return float(rate)
        return (len(pts_s) - 1) / float(pts_s[-1]) if len(pts_s) > 1 and pts_s[-1] > 0 else 0.0

    def _packet_index(self) -> tuple[np.ndarray, FrameIndex]:
        av = self._av
        pts, keys = [], []
        key_pts = None
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size == 0 or pkt.is_discard:  # the flush packet; frames an edit list hides
                    continue
                if pkt.pts is None:
                    raise NotExact("a packet has no presentation time: frames are named by decode order")
                if pkt.is_keyframe:
                    key_pts = pkt.pts
                elif key_pts is not None and pkt.pts < key_pts:
                    self.open_gop = True  # a frame shown before the keyframe it follows: it leans on the GOP before
                pts.append(pkt.pts)
                keys.append(pkt.is_keyframe)
        except av.error.FFmpegError as e:
            if not pts:
                raise VideoError(Reason.NOT_MEDIA, f"pyav cannot read packets: {e}") from None
            self.log.note(f"demux stopped: {e}")  # index what is there; the caller compares with the header
        if not pts:
            raise VideoError(Reason.NO_DURATION, "no video packets")
        raw = np.asarray(pts, dtype=np.int64)
        order = np.argsort(raw, kind="stable")
        raw = raw[order]
        if len(raw) > 1 and not (np.diff(raw) > 0).all():
            raise NotExact("two packets share a presentation time: frames are named by decode order")
        keyframes = np.flatnonzero(np.asarray(keys, dtype=bool)[order]).astype(np.int64)
        if len(keyframes) == 0 or keyframes[0] != 0:
            keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
        pts_s = (raw - raw[0]) * float(self._stream.time_base)
        return raw, FrameIndex(pts_s.astype(np.float64), keyframes, self._avg_fps(pts_s))

    def _decoded_index(self) -> tuple[np.ndarray, FrameIndex]:
        times = [frame.time for frame in self._frames()]
        self._open()  # reading starts from the beginning again
        if not times:
            raise VideoError(Reason.DECODE_FAILED, f"pyav decodes no frames{self.log.first_suffix()}")
        rate = float(self._stream.average_rate or self._stream.guessed_rate or 0)
        if any(t is None for t in times) or len(set(times)) != len(times):
            # no usable times: frame n is shown at n / rate
            if rate <= 0:
                raise VideoError(Reason.NO_DURATION, "frames carry no times and the stream no rate")
            pts_s = np.arange(len(times), dtype=np.float64) / rate
        else:
            # Frames leave the decoder in display order. Times that run backwards are decode times handed on
            # reordered (H.264 B-frames in AVI or ASF, which store no presentation times): sorted, they are the
            # times the frames are shown at, in the order they are shown.
            t = np.sort(np.asarray(times, dtype=np.float64))
            pts_s = t - t[0]
        order = np.arange(len(times), dtype=np.int64)
        return order, FrameIndex(pts_s, np.array([0], dtype=np.int64), rate or self._avg_fps(pts_s))

    # ------------------------------------------------------------ reading

    def read(self, positions: np.ndarray) -> Iterator[AVFrame]:
        self.frame_index()
        if self.index_by == "packets":
            yield from self._read_by_time(positions)
        else:
            yield from self._read_in_order(positions)

    def _read_in_order(self, positions: np.ndarray) -> Iterator[AVFrame]:
        wanted = positions.tolist()
        at = 0
        for n, frame in enumerate(self._frames()):
            if n == wanted[at]:
                yield AVFrame(n, frame, self._rotation)
                at += 1
                if at == len(wanted):
                    return
        raise VideoError(Reason.TRUNCATED, f"stream ended before frame {wanted[at]} of {self._index.num_frames}"
                         f"{self.log.first_suffix()}")

    def _seek(self, key_pos: int) -> Iterator:
        if key_pos == 0:
            self._open()  # from the very start: no seek to trust
        else:
            self._container.seek(int(self._raw_pts[key_pos]), stream=self._stream, backward=True, any_frame=False)
        return self._frames()

    def _read_by_time(self, positions: np.ndarray) -> Iterator[AVFrame]:
        try:
            if self.skip_unwanted and self._can_skip():
                self._wanted = {int(self._raw_pts[p]) for p in positions.tolist()}
            yield from self._read_targets(positions)
        finally:
            self._wanted = None

    def _can_skip(self) -> bool:
        formats = set((self._container.format.name or "").split(","))
        return self._stream.codec_context.name in SKIP_CODECS and bool(formats & SKIP_CONTAINERS)

    def _read_targets(self, positions: np.ndarray) -> Iterator[AVFrame]:
        index, raw = self._index, self._raw_pts
        keyframes = index.keyframes
        frames = None
        current = -1  # position of the last frame handed out
        for target in positions.tolist():
            want = int(raw[target])
            key_at = int(np.searchsorted(keyframes, target, side="right") - 1)
            if frames is None or int(keyframes[key_at]) > current or target <= current:
                frames = self._seek(int(keyframes[key_at]))  # decoding on is cheaper unless a keyframe lies between
            frame = _advance(frames, want)
            if frame is None and self._wanted is not None:  # a discarded frame after all: read on without skipping
                self._wanted = None
                self.skip_fallbacks += 1
                self.log.note(f"frame {target} did not come out with unwanted frames skipped: skipping stops")
                frames = self._seek(int(keyframes[key_at]))
                frame = _advance(frames, want)
            for back in (*_RESEEK_STEPS, None):
                if frame is not None:
                    break
                # Landed past the target (or the frame never came): start further back, at last from the start.
                start = 0 if back is None else int(keyframes[max(0, key_at - back)])
                frames = self._seek(start)
                frame = _advance(frames, want)
                if frame is None and start == 0:
                    break
            if frame is None:
                raise NotExact(f"frame {target} (pts {want}) is never decoded at its time{self.log.first_suffix()}")
            current = target
            yield AVFrame(target, frame, self._rotation)

    def close(self) -> None:
        if self._container is not None:
            if self._threads > 1:
                self._drain()
            self._container.close()
            # the codec context is freed when the last reference goes: not here, while libav may still log
            # into Python (see DecoderLog.free_later)
            self.log.free_later(self._container, self._stream)
            self._container = self._stream = None


    def _drain(self) -> None:
        """Let a frame-threaded decoder finish what its threads hold (with the GIL free) before it is freed.

        Its threads may still be decoding, and logging, the packets sent ahead; freeing the codec context
        waits for them while holding the GIL that a log message into Python needs: a deadlock.
        """
        try:
            for _ in self._stream.codec_context.decode(None):
                pass
        except Exception as e:  # the frames were made; a decoder that will not drain is freed as it is
            self.log.note(f"drain before close: {e}")


def _advance(frames: Iterator, want: int):
    """The next frame whose pts is `want`, or None when the stream passes it or ends first."""
    for frame in frames:
        if frame.pts is None:
            raise NotExact("a decoded frame has no presentation time")
        if frame.pts < want:
            continue
        return frame if frame.pts == want else None
    return None


def _is_cover_art(stream) -> bool:
    disposition = getattr(stream, "disposition", None)
    try:
        return bool(disposition is not None and disposition & stream.disposition.__class__.attached_pic)
    except (AttributeError, TypeError):
        return False
