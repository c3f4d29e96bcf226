"""Every stored frame is the frame its index names: the frame-coded corpus, every mode, backend and thread count.

Zero tolerance: one frame whose drawn number differs from the number its
recorded index names (or whose recorded time is not its presentation time, or
which is not turned upright) fails the case.
"""

from __future__ import annotations

import pytest

from fixtures.codec_corpus import CORPUS
from pipeline.video.config_video import DecodeConfig, InputConfig
from pipeline.video.extract import extract_frames
from pipeline.video.probe import preflight
from tests.pipeline.identity import every_mode, identity_problems


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_stored_frame_is_the_frame_its_index_names(corpus, name, backend, threads):
    case, path = corpus(name)
    decode = DecodeConfig(backend=backend, threads=threads, isolate=False)
    info = preflight(path)
    if backend == "decord" and info.codec not in decode.decord_codecs:
        pytest.skip(f"decord never takes {info.codec}: the pyav case decodes it the same way")
    result = extract_frames(info, every_mode(), decode)
    problems = identity_problems(case, result)
    assert not problems, f"{name} via {result.decoder}: {len(problems)} problems, first: {problems[:5]}"
    if backend == "pyav":
        assert result.decoder in ("pyav", "pyav-sequential")


def test_the_default_backend_is_the_exact_one():
    assert DecodeConfig().backend == "pyav"


def test_decord_is_refused_where_it_is_not_proven(corpus):
    """decord would store wrong frames on these: the guard hands them to PyAV and says why."""
    for name, why in [("hevc_mkv", "hevc"), ("mpeg2_ts", "mpeg2video"), ("h264_editlist", "packet index"),
                      ("h264_open_gop", "open GOP"), ("h264_m2ts", "MPEG-TS"), ("h264_mts", "MPEG-TS")]:
        case, path = corpus(name)
        result = extract_frames(preflight(path), every_mode(), DecodeConfig(backend="decord", isolate=False))
        assert result.decoder == "pyav" and why in result.fallback_reason, (name, result.fallback_reason)


def test_every_default_extension_has_a_case():
    """A suffix a folder input reads by default is a container whose frames this suite proves exact."""
    same_demuxer = {".mov": ".mp4", ".m4v": ".mp4"}  # QuickTime and iTunes video: MP4's demuxer
    made = {f".{case.ext}" for case in CORPUS.values()}
    missing = [e for e in InputConfig(path=".").extensions if same_demuxer.get(e, e) not in made]
    assert not missing, f"default input.extensions with no frame-identity case: {missing}"
