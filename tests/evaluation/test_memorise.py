"""The trainer learns, measured by `prolongvid eval`: a handful of multiple-choice pairs go from chance to
memorised, while the held-out split stays near chance (the eval does not read the answer from the prompt)."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.core.config_load import load_config
from tests.evaluation.mc_run import write_mc_run
from train.config import TrainConfig
from train.trainer import train


def _eval(ckpt, run, out, split) -> dict:
    assert main(["eval", str(ckpt), str(run), "--split", split, "--frames", "2", "--out", str(out),
                 "--no-progress", "--batch-size", "8"]) == 0  # fmt: skip
    return json.loads((out / "eval.json").read_text())


@pytest.mark.timeout(1800)
def test_training_memorises_the_pairs_and_not_the_held_out_ones(tmp_path, capsys):
    from fixtures.tiny_train_model import build_model, build_tokenizer

    run = tmp_path / "run"
    keys = write_mc_run(run, videos=9)
    assert (len(keys["train"]), len(keys["eval"])) == (5, 4)
    start = tmp_path / "init"  # the model `model.tiny` trains from (same seed), as a checkpoint
    tokenizer = build_tokenizer()
    build_model(tokenizer, pool=4, seed=0).save_pretrained(start)
    tokenizer.save_pretrained(start)
    before = _eval(start, run, tmp_path / "before", "train")
    assert before["overall"]["questions"] == 5 and before["overall"]["accuracy"] <= 0.5

    cfg = load_config(None, [
        f"data.shards={run}", f"output.dir={tmp_path / 'trained'}", "model.tiny=true", "model.video_pool_size=4",
        "data.frames=2", "data.image_size=64", "data.num_workers=0", "data.shuffle_buffer=8", "data.batch_size=5",
        "data.mask=assistant_only", "optim.max_steps=60", "optim.precision=fp32", "optim.lr.projector=0.003",
        "optim.lr.language_model=0.003", "optim.warmup_ratio=0.05", "output.save_every=60", "output.console=false",
    ], model=TrainConfig)  # fmt: skip
    history = train(cfg)["history"]
    assert {i for h in history for i in h["items"]} == {f"{k}-attribute-0" for k in keys["train"]}  # never eval
    after = _eval(tmp_path / "trained", run, tmp_path / "after", "train")
    held_out = _eval(tmp_path / "trained", run, tmp_path / "held_out", "eval")
    assert after["overall"]["accuracy"] >= 0.9, after
    assert held_out["overall"]["questions"] == 4 and held_out["overall"]["accuracy"] <= 0.5, held_out

    capsys.readouterr()
    assert main(["eval", "--compare", str(tmp_path / "before"), str(tmp_path / "after"), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "before" in table and "after" in table and "100.0" in table and "short" in table
    assert (tmp_path / "compare.png").stat().st_size > 1000
