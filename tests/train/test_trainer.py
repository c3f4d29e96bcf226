"""The trainer on shards the pipeline made: loss falls, resume is exact, checkpoints load in transformers."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from pipeline.core.config_load import load_config
from pipeline.run import run_pipeline
from tests.conftest import pipeline_config
from train import checkpoint
from train.config import TrainConfig
from train.trainer import train

TURNS = [{"from": "human", "value": "<image>\nWhat happens in the video?"},
         {"from": "gpt", "value": "A person walks across the room."}]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, video, ray_local):
    root = tmp_path_factory.mktemp("trainshards")
    (root / "v").mkdir()
    for name in ("clock_10s", "h264_10s", "hevc_10s"):
        shutil.copy(video(name), root / "v" / f"{name}.mp4")
    records = [{"id": f"{n}-{i}", "video": f"v/{n}.mp4", "conversations": TURNS}
               for n in ("clock_10s", "h264_10s", "hevc_10s") for i in range(2)]
    (root / "ann.json").write_text(json.dumps(records))
    out = root / "out"
    run_pipeline(pipeline_config(root / "ann.json", out, "input.format=llava", f"input.video_root={root}",
                                 "sampling.sets.0.num_frames=16", "sampling.sets.0.resize.size=64",
                                 "filters.visual.enabled=false", "shards.max_samples=1"))
    return out


def config(shards, out, *sets) -> TrainConfig:
    base = [f"data.shards={shards}", f"output.dir={out}", "model.tiny=true", "model.video_pool_size=4",
            "data.frames=4", "data.image_size=64", "data.num_workers=0", "data.shuffle_buffer=4",
            "optim.max_steps=12", "optim.precision=fp32", "optim.lr.projector=0.002", "optim.lr.language_model=0.002",
            "optim.warmup_ratio=0.1", "output.log_every=1", "output.save_every=4"]
    return load_config(None, base + list(sets), model=TrainConfig)


def test_loss_falls_on_the_pipelines_shards(shards, tmp_path):
    result = train(config(shards, tmp_path / "run"))
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "data_wait_s", "step_s"} <= set(logged[0])
    assert [d.name for d in checkpoint.checkpoint_dirs(tmp_path / "run")] == ["step-000008", "step-000012"]  # keep 2


@pytest.mark.parametrize("workers,batch", [(0, 1), (2, 1), (2, 2)])
def test_resume_continues_the_same_loss_trajectory(shards, tmp_path, workers, batch):
    # 6 items an epoch from 3 shards; 2 loader workers read 2 and 1 shards: uneven streams, epochs crossed
    extra = (f"data.num_workers={workers}", f"data.batch_size={batch}")
    full = train(config(shards, tmp_path / "full", *extra))["history"]
    first = train(config(shards, tmp_path / "cut", *extra))
    assert first["steps"] == 12
    # Kill after step 8: drop the later checkpoint, then rerun the same config into the same dir.
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-000012")
    resumed = train(config(shards, tmp_path / "cut", *extra))["history"]
    assert [h["step"] for h in resumed] == [9, 10, 11, 12]
    assert [h["items"] for h in resumed] == [h["items"] for h in full[8:]]  # the same conversations, step by step
    assert len({i for h in full for i in h["items"]}) == 6  # six different conversations in turn
    for a, b in zip(resumed, full[8:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (resumed, full[8:])


def flat_layout(state: dict) -> dict:
    """`state.pt` as the trainer wrote it before checkpoint parts: step, optimizer and scheduler at the top, each
    data-position field and the RNG as a list over ranks."""
    data = state["data"]
    return {"step": state["train"]["step"], "optimizer": state["optimizer"], "scheduler": state["scheduler"],
            **{name: [rank[name] for rank in data] for name in ("epoch", "consumed", "pending", "next_worker")},
            "rng": state["rng"]}  # fmt: skip


def test_a_checkpoint_in_the_layout_before_parts_resumes_the_same(shards, tmp_path):
    import torch

    extra = ("data.num_workers=2", "data.batch_size=2")  # two loader workers, items waiting in buckets
    full = train(config(shards, tmp_path / "full", *extra))["history"]
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    shutil.rmtree(cut / "checkpoints" / "step-000012")
    old = checkpoint.latest(cut) / "state.pt"
    torch.save(flat_layout(torch.load(old, weights_only=True)), old)
    assert checkpoint.load_state(old.parent)["layout"] == 1  # read as the parts it holds
    resumed = train(config(shards, cut, *extra))["history"]
    assert [h["step"] for h in resumed] == [9, 10, 11, 12]
    assert [h["items"] for h in resumed] == [h["items"] for h in full[8:]]
    for a, b in zip(resumed, full[8:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (resumed, full[8:])
    assert checkpoint.load_state(checkpoint.latest(cut))["layout"] == checkpoint.LAYOUT  # saved as parts again


def test_checkpoint_loads_with_transformers_and_starts_the_next_stage(shards, tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    train(config(shards, tmp_path / "stage1", "optim.max_steps=4"))
    ckpt = checkpoint.latest(tmp_path / "stage1")
    model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = checkpoint.load_state(ckpt)  # weights_only: plain tensors and numbers
    assert state["train"]["step"] == 4
    stage2 = train(config(shards, tmp_path / "stage2", "optim.max_steps=2", "data.frames=8",
                          f"model.init_from={tmp_path / 'stage1'}"))
    assert stage2["steps"] == 2  # a fresh schedule from the previous stage's weights


def test_bad_train_configs_name_the_field(tmp_path):
    from pipeline.core.config_load import ConfigError

    with pytest.raises(ConfigError, match="optim"):
        load_config(None, [f"data.shards={tmp_path}", f"output.dir={tmp_path}", "model.tiny=true"], model=TrainConfig)
    with pytest.raises(ConfigError, match="model.path"):
        load_config(None, [f"data.shards={tmp_path}", f"output.dir={tmp_path}", "optim.max_steps=1",
                           "model.video_pool_size=12"], model=TrainConfig)


def test_two_ranks_under_torchrun_through_the_cli(shards, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "ddp"
    sets = [f"data.shards={shards}", f"output.dir={out}", "nproc_per_node=2", "optim.max_steps=4", "output.save_every=2"]
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(root / "configs/train/tiny_debug.yaml"),
                           *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained to step 4") == 1  # rank 0 reports
    summary = done.stdout.strip().splitlines()[-1]  # steps, time, tokens, final loss and the checkpoint
    assert re.fullmatch(r"trained to step 4 in [\d.]+s: \d+ tokens, final loss [\d.]+; checkpoint \S+step-000004", summary)
    lines = done.stderr.splitlines()
    assert sum(bool(re.match(r"step [14]/4  loss [\d.]+  lr \S+  tokens/s \d+  data wait", x)) for x in lines) == 2
    assert "train:" in done.stderr and "Writing model shards" not in done.stderr  # the bar, not the libraries' bars
    state = checkpoint.load_state(checkpoint.latest(out))
    assert state["train"]["step"] == 4 and len(state["data"]) == 2  # each rank's data position is kept


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_rank_with_the_same_global_batch(shards, tmp_path, parallel):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    two = tmp_path / "two_shards"
    two.mkdir()
    from pipeline.core.sample import CONVERSATIONS_MEMBER
    from pipeline.core.sample_io import dump_conversations, parse_conversations
    from shards.reader import iter_tar_samples
    from shards.tarwriter import ShardFile

    # Two shards of one sample with one conversation each: rank 0 trains on one, rank 1 on the other,
    # and the single process sees both in one batch of two.
    for tar in sorted((shards / "shards").glob("*.tar"))[:2]:
        out = ShardFile(two, tar.name)
        for key, members in iter_tar_samples(tar):
            first = parse_conversations(members[CONVERSATIONS_MEMBER], key)[:1]
            members[CONVERSATIONS_MEMBER] = dump_conversations(first)
            out.write({"__key__": key, **members})
        out.close()
    common = [f"data.shards={two}", "optim.max_steps=3", "data.shuffle_buffer=0", "output.log_every=1",
              "optim.lr.projector=0.002", "optim.lr.language_model=0.002"]

    def run(out, *extra):
        sets = common + [f"output.dir={out}", *extra]
        done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(root / "configs/train/tiny_debug.yaml"),
                               *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, cwd=root,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]

    one = run(tmp_path / "one", "data.batch_size=2")
    ranks = run(tmp_path / "ranks", "data.batch_size=1", "nproc_per_node=2", f"parallel={parallel}")
    assert len(one) == len(ranks) == 3
    assert ranks == pytest.approx(one, rel=1e-4, abs=1e-5), (one, ranks)


def test_fsdp_resumes_exactly_and_saves_a_transformers_checkpoint(shards, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from train.model import VideoLlava

    root = Path(__file__).resolve().parents[2]

    def run(out):
        sets = [f"data.shards={shards}", f"output.dir={out}", "nproc_per_node=2", "parallel=fsdp", "optim.max_steps=6",
                "output.save_every=2", "output.log_every=1", "data.num_workers=0", "output.keep=3"]
        done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(root / "configs/train/tiny_debug.yaml"),
                               *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, cwd=root,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return {r["step"]: r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}

    full = run(tmp_path / "full")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    shutil.rmtree(cut / "checkpoints" / "step-000006")  # as if killed after step 4's checkpoint
    (cut / "log.jsonl").write_text("")
    resumed = run(cut)
    assert sorted(resumed) == [5, 6]
    assert [resumed[5], resumed[6]] == pytest.approx([full[5], full[6]], rel=1e-5)
    state = checkpoint.load_state(checkpoint.latest(cut))
    assert state["train"]["step"] == 6 and state["optimizer"]["state"]  # the full optimizer state, by parameter name
    VideoLlava.from_pretrained(checkpoint.latest(cut))  # plain safetensors a transformers model loads
