"""Sources are confined where they are opened, not only where they are listed: a folder swapped for a symlink out,
a file replaced between probe and decode, and a hard link to an outside file never put outside frames in a run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.audit import run_audit
from pipeline.run_config import load_run_config
from pipeline.run_plan import resolve_plan
from pipeline.video.opened import SourceRules, open_source
from pipeline.video.sources import load_sources
from pipeline.core.stage import Stage, run_stage
from pipeline.core.task import VideoTask
from shards.reader import open_run, read_index, read_rejects

ROOT = Path(__file__).resolve().parents[2]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


@pytest.fixture
def planted(tmp_path, video):
    """inside/sub/clip.mp4 (one video) and outside/sub/clip.mp4 (another, the user's file outside the roots)."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    (inside / "sub").mkdir(parents=True)
    (outside / "sub").mkdir(parents=True)
    shutil.copy(video("h264_10s"), inside / "sub" / "clip.mp4")
    shutil.copy(video("clock_10s"), outside / "sub" / "clip.mp4")
    return inside, outside, (outside / "sub" / "clip.mp4").read_bytes()


def video_stages(inside: Path, tmp_path: Path, *sets: str) -> tuple[list[Stage], VideoTask]:
    """The run's own probe and decode stages (built from the config as a run builds them) and the listed source."""
    cfg = load_run_config(ROOT / "configs/demo.yaml", [f"input.path={inside}", "input.format=auto", "llm.enabled=false",
                                                   f"output.dir={tmp_path / 'out'}", *sets])
    stages = {s.name: s for s in resolve_plan(cfg).groups[0].stages}
    (task,) = load_sources(cfg.input).tasks
    return [stages["probe"], stages["decode"]], task


def swap_for_symlink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".moved"))
    folder.symlink_to(target, target_is_directory=True)


def no_frames(task: VideoTask) -> bool:
    return not any(task.frames.values())


def test_a_folder_swapped_for_a_symlink_out_after_listing_is_refused_when_opened(planted, tmp_path):
    inside, outside, outside_bytes = planted
    (probe, decode), task = video_stages(inside, tmp_path, f"input.allowed_roots=[{inside}]")
    swap_for_symlink(inside / "sub", outside / "sub")  # after listing, before the probe
    out = run_stage(decode, run_stage(probe, task))
    decode.teardown()
    assert (out.error.stage, out.error.reason) == ("probe", "outside_allowed_roots"), out.error
    assert str(outside / "sub" / "clip.mp4") in out.error.detail
    assert no_frames(out) and "video" not in out.meta
    assert (outside / "sub" / "clip.mp4").read_bytes() == outside_bytes


def test_a_swap_between_probe_and_decode_is_refused_by_the_decoder(planted, tmp_path):
    inside, outside, outside_bytes = planted
    (probe, decode), task = video_stages(inside, tmp_path, f"input.allowed_roots=[{inside}]")
    probed = run_stage(probe, task)
    assert not probed.rejected
    swap_for_symlink(inside / "sub", outside / "sub")  # the decode child opens the source again
    out = run_stage(decode, probed)
    decode.teardown()
    assert (out.error.stage, out.error.reason) == ("decode", "outside_allowed_roots"), out.error
    assert no_frames(out) and "decode" not in out.meta
    assert (outside / "sub" / "clip.mp4").read_bytes() == outside_bytes


@pytest.mark.parametrize("roots", [True, False])
def test_a_file_replaced_between_probe_and_decode_is_refused_with_or_without_roots(planted, tmp_path, roots):
    inside, outside, _ = planted
    (probe, decode), task = video_stages(inside, tmp_path, *([f"input.allowed_roots=[{inside}]"] if roots else []))
    probed = run_stage(probe, task)
    assert not probed.rejected
    other = inside / "other.bin"
    shutil.copy(outside / "sub" / "clip.mp4", other)
    os.replace(other, inside / "sub" / "clip.mp4")  # another file under the same name, inside the roots
    out = run_stage(decode, probed)
    decode.teardown()
    assert (out.error.stage, out.error.reason) == ("decode", "source_changed"), out.error
    assert "ino" in out.error.detail and no_frames(out)


def stored_and_rejected(inside: Path, out: Path, *sets: str) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """A real run over `inside`: the names of the videos it stored, and (stage, reason) of those it rejected."""
    done = cli("run", ROOT / "configs/demo.yaml", "--set", f"input.path={inside}", "--set", "input.format=auto",
               "--set", "llm.enabled=false", "--set", f"output.dir={out}", *(a for s in sets for a in ("--set", s)))
    assert done.returncode == 0, done.stderr[-3000:]
    run = open_run(out)
    return ({Path(r["source"]).name for r in read_index(run)},
            {Path(r["source"]).name: (r["stage"], r["reason"]) for r in read_rejects(run)})


def test_a_hard_link_to_an_outside_file_is_refused_unless_allowed(planted, tmp_path):
    inside, outside, outside_bytes = planted
    os.link(outside / "sub" / "clip.mp4", inside / "linked.mp4")  # the outside file, under a name inside
    roots = f"input.allowed_roots=[{inside}]"
    strict = stored_and_rejected(inside, tmp_path / "strict", roots)
    assert strict == ({"clip.mp4"}, {"linked.mp4": ("probe", "hard_link")})  # the plain video is stored
    links = stored_and_rejected(inside, tmp_path / "links", roots, "input.allow_hard_links=true")
    assert links == ({"clip.mp4", "linked.mp4"}, {})
    assert (outside / "sub" / "clip.mp4").read_bytes() == outside_bytes

    # The audit opens sources as the run did (its roots and hard-link rule from run.json) and must find the
    # file the run read: the hard link audits, a replaced file does not.
    shutil.copy(outside / "sub" / "clip.mp4", inside / "new.bin")
    os.replace(inside / "new.bin", inside / "sub" / "clip.mp4")
    audits = {Path(a.source).name: a for a in run_audit(tmp_path / "links", samples=2, max_frames=2)}
    assert audits["linked.mp4"].error is None and audits["linked.mp4"].mismatches(30.0) == []
    assert "source_changed" in (audits["clip.mp4"].error or "") and audits["clip.mp4"].frames == []


def test_the_opener_reads_the_open_file_not_the_name(planted, tmp_path):
    inside, outside, outside_bytes = planted
    name = inside / "sub" / "clip.mp4"
    mine = name.read_bytes()
    rules = SourceRules.from_input(load_run_config(None, [f"input.path={inside}", "output.dir=unused",
                                                      f"input.allowed_roots=[{inside}]"]).input)
    with open_source(name, rules) as opened:
        swap_for_symlink(inside / "sub", outside / "sub")  # the name now leads outside
        with open(opened.path, "rb") as fh:  # what PyAV and decord open
            assert fh.read() == mine
        done = subprocess.run(["cat", opened.path], capture_output=True, pass_fds=opened.pass_fds, check=True)
        assert done.stdout == mine  # what ffprobe and ffmpeg read in a child
    assert (outside / "sub" / "clip.mp4").read_bytes() == outside_bytes
