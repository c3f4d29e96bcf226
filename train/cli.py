"""`prolongvid train CONFIG`: check the data, launch the ranks (torchrun) or train here, print the summary.

`--dry-run` prints the per-GPU memory estimate (`train/plan.py`) and trains nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from pipeline.core.config_load import ConfigError, load_config
from train.config import TrainConfig
from train.preflight import check_training_data
from train.topology import Topology


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set or [], model=TrainConfig)
    topology = Topology.launched(cfg, cfg.nproc_per_node)  # this rank's, or the ranks about to be launched
    if getattr(args, "dry_run", False):
        from train.plan import format_plan, memory_plan

        try:
            plan = memory_plan(cfg, topology)
        except ConfigError:
            raise
        except ValueError as e:  # the model's heads do not split over sp
            raise ConfigError(str(e)) from None
        print(format_plan(plan, cfg))
        return 0
    data = check_training_data(cfg.data.shards, topology.readers)  # before anything is written
    if topology.rank == 0:
        print(f"training on {cfg.data.shards}: {data}", file=sys.stderr)
    if cfg.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:  # launch the ranks; a multi-node launcher sets WORLD_SIZE
        sets = [x for s in args.set or [] for x in ("--set", s)]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.nproc_per_node}",
               "-m", "pipeline", "train", args.config, *sets]
        return subprocess.call(cmd)
    from train.console import quiet_libraries
    from train.trainer import train

    quiet_libraries()
    result = train(cfg, topology)
    if topology.rank == 0:
        print(result["summary"])
    return 0
