"""Frames no wanted frame needs are left undecoded (`decode.skip_unwanted`), and the frames that come out are the
same pixels as with every frame decoded; a wanted frame that does not come out turns skipping off, never wrong."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.video.decode_pyav import PyAVBackend
from pipeline.video.sampling import uniform_indices


@pytest.fixture
def coded(corpus):
    """A frame-coded corpus file by case name (the session's `corpus`, shared with the identity tests)."""
    return lambda name: corpus(name)[1]


def read(path, positions, skip: bool, threads: int = 1, patch=None):
    backend = PyAVBackend(str(path), codec_threads=threads, skip_unwanted=skip)
    try:
        backend.frame_index()
        if patch:
            patch(backend)
        frames = [(f.index, f.rgb(96, 54, "bicubic")) for f in backend.read(positions)]
        return frames, backend.frames_decoded, backend.skip_fallbacks
    finally:
        backend.close()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["h264_bpyramid", "h264_many_b", "h264_gop12", "h264_editlist", "h264_flv",
                                  "h264_start_offset", "h264_open_gop", "h264_vfr", "h264_fragmented"])
def test_skipping_decodes_less_and_returns_the_same_pixels(coded, name, threads):
    path = coded(name)
    n = PyAVBackend(str(path)).frame_index().num_frames
    positions = uniform_indices(n, 32)
    plain, all_decoded, _ = read(path, positions, skip=False, threads=threads)
    skipped, decoded, fallbacks = read(path, positions, skip=True, threads=threads)
    assert [i for i, _ in skipped] == positions.tolist() == [i for i, _ in plain]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plain, skipped))  # bit for bit
    assert fallbacks == 0 and decoded < all_decoded  # non-reference frames were left undecoded


@pytest.mark.parametrize("name", ["hevc_mkv", "vp9_webm", "av1_mp4", "mpeg2_ts", "h264_m2ts"])
def test_codecs_not_proven_decode_every_frame(coded, name):
    path = coded(name)
    positions = uniform_indices(PyAVBackend(str(path)).frame_index().num_frames, 16)
    assert read(path, positions, skip=True)[1] == read(path, positions, skip=False)[1]


def test_a_wanted_frame_that_does_not_come_out_turns_skipping_off(coded):
    """As if the decoder dropped a wanted frame: it is told one wanted frame is not wanted. The frame is still
    returned, the right one, decoded with skipping off."""
    path = coded("h264_many_b")
    positions = np.arange(0, 120, 7)
    plain, _, _ = read(path, positions, skip=False)
    triggered = 0
    for victim in positions[1:6].tolist():
        def hide(backend, victim=victim):
            real = backend._read_targets

            def lying(pos):
                backend._wanted.discard(int(backend._raw_pts[victim]))
                return real(pos)

            backend._read_targets = lying

        frames, _, fallbacks = read(path, positions, skip=True, patch=hide)
        assert [i for i, _ in frames] == positions.tolist()
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plain, frames))
        triggered += fallbacks
    assert triggered > 0  # a non-reference victim was discarded and caught by its time
