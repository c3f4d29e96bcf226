"""What training shows on the console (rank 0): a progress bar over optimizer steps, the periodic log line, and a
summary at the end; the libraries' own bars and chatter are turned off so these stay readable."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm


def quiet_libraries() -> None:
    """No "Writing model shards" bars or loading chatter from transformers / huggingface_hub on every save."""
    import warnings

    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    for name in ("torch.distributed", "torch._dynamo", "webdataset"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def log_line(record: dict[str, Any], max_steps: int) -> str:
    return (f"step {record['step']}/{max_steps}  loss {record['loss']:.4f}  lr {record['lr']:.3g}  "
            f"tokens/s {record['tokens_per_s']:.0f}  data wait {record['data_wait_s']:.2f}s  step {record['step_s']:.2f}s")  # fmt: skip


class Console:
    def __init__(self, max_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.max_steps = max_steps
        self.started = time.perf_counter()
        self.tokens = 0
        self.bar = tqdm(total=max_steps, initial=start_step, unit="step", desc="train", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, leave=True)  # fmt: skip

    def step(self, record: dict[str, Any], logged: bool) -> None:
        self.tokens += record.get("tokens", 0)
        if not self.enabled:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        if logged:
            self.bar.write(log_line(record, self.max_steps), file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    def summary(self, steps: int, final_loss: float | None, checkpoint: str | None) -> str:
        seconds = time.perf_counter() - self.started
        loss = f"{final_loss:.4f}" if final_loss is not None else "-"
        return (f"trained to step {steps} in {seconds:.1f}s: {self.tokens} tokens, final loss {loss}; "
                f"checkpoint {checkpoint or '-'}")
