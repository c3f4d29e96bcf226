"""The run's topology is worked out once, from the config and the launch, and what the model decides is no
config key: nothing in the trainer writes into the user's config."""

from __future__ import annotations

import pytest

from pipeline.core.config_load import ConfigError, load_config
from train.config import TrainConfig
from train.topology import Topology


def tiny(tmp_path, *sets: str) -> TrainConfig:
    base = [f"data.shards={tmp_path}", f"output.dir={tmp_path}", "model.tiny=true", "optim.max_steps=1"]
    return load_config(None, base + list(sets), model=TrainConfig)


def test_sequence_parallel_groups_read_as_one_reader(tmp_path):
    cfg = tiny(tmp_path, "parallel.sp_size=2", "parallel.sharding=fsdp", "optim.global_batch_size=8")
    ranks = [Topology.from_config(cfg, 4, rank) for rank in range(4)]
    assert [t.reader for t in ranks] == [0, 0, 1, 1] and {t.readers for t in ranks} == {2}
    assert list(ranks[0].reader_ranks) == [0, 2]  # a group's items are counted once, from its first rank
    assert all(t.fsdp and not t.ddp and t.sharding == "fsdp" and t.accum == 4 for t in ranks)


def test_one_rank_is_a_plain_model_whatever_the_sharding(tmp_path):
    one = Topology.from_config(tiny(tmp_path, "parallel=fsdp"), 1)
    assert not one.fsdp and not one.ddp and one.sharding == "ddp"
    two = Topology.from_config(tiny(tmp_path), 2)
    assert two.ddp and two.readers == 2 and two.accum == 1


def test_the_launch_decides_rank_and_world(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert (Topology.launched(cfg).world, Topology.launched(cfg, 4).world) == (1, 4)  # 4: the ranks to launch
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert (Topology.launched(cfg, 8).rank, Topology.launched(cfg, 8).world) == (1, 2)  # torchrun's


def test_what_the_model_or_the_run_decides_is_no_data_key(tmp_path):
    for key in ("data.tokens_per_frame=20", "data.seed=3", "data.reader=[0,1]"):
        with pytest.raises(ConfigError, match=key.split("=")[0]):
            tiny(tmp_path, key)
