"""A frame-threaded PyAV decoder is torn down without deadlocking, however often.

Its threads may still be decoding (and logging into Python) the packets sent
ahead when the codec context is freed, and freeing it waits for them while the
GIL is held: before the decoder was drained first, a tiny 4-frame video with
two decode threads and one frame (a seek) hung within a few dozen extractions. The loop runs in a
child process, so a hang fails the test instead of stopping the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures.videos import SynthVideo, make_video

REPO = Path(__file__).resolve().parents[2]

LOOP = textwrap.dedent("""
    import sys
    from pipeline.run_config import load_run_config
    from pipeline.video.extract import extract_frames
    from pipeline.video.probe import preflight

    cfg = load_run_config(None, ["input.path=.", "output.dir=.", "decode.backend=pyav", "decode.threads=2",
                             "sampling.sets=[{name: shard, mode: uniform, num_frames: 1, resize: {size: 32}}]"])
    info = preflight(sys.argv[1], cfg.probe, cfg.limits)
    for _ in range(int(sys.argv[2])):
        assert len(extract_frames(info, cfg.sampling, cfg.decode).sets["shard"].indices) == 1
    print("done")
""")


@pytest.mark.timeout(600)
def test_a_frame_threaded_decoder_closes_without_deadlock(tmp_path):
    video = make_video(SynthVideo("tiny_threads", duration_s=2, width=64, height=36, fps=2, audio=False), tmp_path)
    run = subprocess.run([sys.executable, "-c", LOOP, str(video), "300"], cwd=REPO, capture_output=True, text=True,
                         timeout=500, check=False)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-2000:]
