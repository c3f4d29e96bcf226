"""`eval.bench` in a train config: each stage ends with its accuracy beside its last checkpoint, and
`prolongvid eval --compare` puts the stages side by side."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.core.config_load import ConfigError, load_config
from tests.evaluation.mc_run import write_mc_run
from train import checkpoint
from train.config import TrainConfig
from train.trainer import train


def stage(run, out, frames, *extra) -> TrainConfig:
    return load_config(None, [
        f"data.shards={run}", f"output.dir={out}", "model.tiny=true", "model.video_pool_size=4", f"data.frames={frames}",
        "data.image_size=64", "data.num_workers=0", "data.batch_size=5", "optim.max_steps=2", "optim.precision=fp32",
        "output.save_every=2", "output.console=false", f"eval.bench={run}", *extra,
    ], model=TrainConfig)  # fmt: skip


def test_the_eval_config_is_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match="eval.bnch"):
        load_config(None, ["data.shards=x", "output.dir=y", "model.tiny=true", "optim.max_steps=1", "eval.bnch=z"],
                    model=TrainConfig)  # fmt: skip


@pytest.mark.timeout(900)
def test_each_stage_ends_with_its_eval_and_compare_tabulates_them(tmp_path, capsys):
    run = tmp_path / "run"
    write_mc_run(run, videos=9)
    first = train(stage(run, tmp_path / "stage1", 2))
    second = train(stage(run, tmp_path / "stage2", 3, f"model.init_from={tmp_path / 'stage1'}"))
    for out, result, frames in ((tmp_path / "stage1", first, 2), (tmp_path / "stage2", second, 3)):
        report = json.loads((checkpoint.latest(out) / "eval" / "eval.json").read_text())
        assert report["frames"] == frames and report["overall"]["questions"] == 4  # the held-out split
        assert "overall" in result["summary"]
    capsys.readouterr()
    assert main(["eval", "--compare", str(tmp_path / "stage1"), str(tmp_path / "stage2")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["checkpoint", "frames", "short"] and len(lines) == 4
    assert lines[2].split()[:2] == ["stage1", "2"] and lines[3].split()[:2] == ["stage2", "3"]
