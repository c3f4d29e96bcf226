"""Memory stays bounded: a 2-hour video's frame sets never sit in memory as raw pixels."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fixtures.videos import SynthVideo, make_video

LONG = SynthVideo("long_2h_lowres", duration_s=7200, width=128, height=72, fps=4, audio=False, keyint=40)
BOUND_MB = 300

CHILD = textwrap.dedent(
    """
    import json, sys
    from pipeline.run_config import load_run_config
    from pipeline.video.extract import extract_frames
    from pipeline.video.probe import preflight

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    cfg = load_run_config(None, ["input.path=x", "output.dir=y", "decode.backend=" + sys.argv[2],
                             "sampling.sets.1.resize.size=160"])
    info = preflight(sys.argv[1], cfg.probe, cfg.limits)
    import av, PIL.Image
    from pipeline.video.decoders import import_decord
    import_decord()  # everything the decode loads, before the baseline
    base = status("VmRSS")
    result = extract_frames(info, cfg.sampling, cfg.decode)
    print(json.dumps({
        "peak_growth": status("VmHWM") - base,
        "sets": {n: [len(s), s.width, s.height, sum(map(len, s.jpegs))] for n, s in result.sets.items()},
    }))
    """
)


@pytest.fixture(scope="module")
def long_video(video_dir):
    return make_video(LONG, video_dir)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_two_hour_video_samples_within_a_few_hundred_mb(long_video, backend):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(long_video), backend], capture_output=True, text=True, timeout=900, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    shard, caption = report["sets"]["shard"], report["sets"]["caption"]
    frames = LONG.duration_s * LONG.fps
    # The default shard set stores every training stage's exact frames: the union of the paper's linspace picks.
    union = len(set(np.concatenate([np.linspace(0, frames - 1, k, dtype=int) for k in (32, 128, 192)])))
    assert shard[:3] == [union, 384, 384] and union > 192
    assert caption[:3] == [7200, 284, 160]  # one frame a second for two hours
    raw = (union * 384 * 384 + 7200 * 284 * 160) * 3
    assert raw > 3 * BOUND_MB * 2**20  # holding the frames as arrays would break the bound three times over
    jpeg_bytes = shard[3] + caption[3]
    assert report["peak_growth"] < BOUND_MB * 2**20, (report, jpeg_bytes)
