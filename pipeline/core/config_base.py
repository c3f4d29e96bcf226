"""The base of every config model, and the bounded number types of the run config.

A number in the run config is of its type (`true`, `"8"` and `8.0` are no count; an int stands for a float),
finite, and inside a range a run can use: a value that would fail every video (a rate of 1e300, a timeout of
.inf, a million decode threads) fails at load instead, naming its key, its value and the bound it broke.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

DAY_S = 86400.0  # the longest timeout, wait or back-off
MAX_VIDEO_S = 7 * DAY_S  # the longest span of video a limit, filter or clip may name
MAX_FPS = 1000.0  # frames a second: above any camera's rate
MAX_SAMPLE_FRAMES = 16384  # frames one sample may hold; input.max_frames_per_sample is at most this
MAX_VIDEO_FRAMES = int(MAX_VIDEO_S * MAX_FPS)  # frames one video may have
MAX_SIDE = 65536  # pixels a frame side may have (AV1's limit; most codecs stop at 16384)
MAX_MEMORY_MB = 1 << 22  # 4 TiB: more memory than any node has
MAX_BYTES = 1 << 40  # 1 TiB: larger than any shard or batch
MAX_TOKENS = 1 << 24  # tokens of a sequence, a frame or an answer
MAX_WORKERS = 1 << 20  # workers, requests or videos in flight at once
MAX_NODE_CPUS = 1024  # CPUs one worker may reserve
MAX_NODE_GPUS = 64  # GPUs one worker or replica may reserve
THREADS_PER_CPU = 4  # threads a setting may ask for per CPU of the machine loading the config


class Strict(BaseModel):
    """Unknown keys are refused, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Strict):
    """A section of the run config: also no value coerced (no `"8"`, `true` or `8.0` for an int) and no float
    infinite or NaN. YAML and `--set` values arrive typed, so ints stand for floats and lists stay lists."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


# A config loaded on a small head node (or `dedup` reading a bigger machine's config.resolved.yaml) may name the
# threads of bigger decode nodes: the cap never falls below this.
MIN_THREAD_CAP = 256


def max_threads() -> int:
    """The most threads or local CPUs a config may name: 4x the CPUs of the machine loading it, at least 256."""
    return max(THREADS_PER_CPU * (os.cpu_count() or 1), MIN_THREAD_CAP)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """A number field's bounds (`Annotated[int, Range(1, 100)]`): its type exactly, finite, `low` (excluded when
    `above`) to `high`. Below `low` pydantic says which bound; above `high` or not finite, the message gives both."""

    low: float
    high: float
    above: bool = False

    @property
    def span(self) -> str:
        low, high = _number(self.low), _number(self.high)
        return f"above {low} and at most {high}" if self.above else f"from {low} to {high}"

    def _check(self, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise PydanticCustomError("finite_number", "Input should be a finite number {span}",
                                          {"span": self.span})
            if value > self.high:
                raise PydanticCustomError("less_than_equal", "Input should be {span}", {"span": self.span})
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema: Any = handler(source)
        schema.update({"strict": True, "le": self.high, ("gt" if self.above else "ge"): self.low})
        if schema.get("type") == "float":
            schema["allow_inf_nan"] = False
        return core_schema.no_info_before_validator_function(self._check, schema)


def _within_cpus(n: int) -> int:
    cap = max_threads()
    if n > cap:
        raise PydanticCustomError("less_than_equal", "Input should be from 0 to {cap}: {per}x the {cpus} CPUs of "
                                  "this machine, at least {least}", {"cap": cap, "per": THREADS_PER_CPU,
                                                                    "cpus": os.cpu_count() or 1, "least": MIN_THREAD_CAP})
    return n


Seconds = Annotated[float, Range(0, DAY_S, above=True)]  # a timeout or back-off: above 0, at most a day
SecondsOrZero = Annotated[float, Range(0, DAY_S)]
VideoSeconds = Annotated[float, Range(0, MAX_VIDEO_S, above=True)]  # a span of video: above 0, at most a week
VideoSecondsOrZero = Annotated[float, Range(0, MAX_VIDEO_S)]
Fps = Annotated[float, Range(0, MAX_FPS, above=True)]
Share = Annotated[float, Range(0, 1)]  # a fraction or a ratio
Luma = Annotated[float, Range(0, 255)]  # a level or difference on the 0-255 luma scale
Temperature = Annotated[float, Range(0, 2)]
SampleFrames = Annotated[int, Range(0, MAX_SAMPLE_FRAMES, above=True)]  # frames of one sample or clip
SampleFramesOrZero = Annotated[int, Range(0, MAX_SAMPLE_FRAMES)]  # 0: no bound
VideoFrames = Annotated[int, Range(0, MAX_VIDEO_FRAMES)]  # frames of a whole video
Side = Annotated[int, Range(0, MAX_SIDE, above=True)]  # pixels along a frame side
MemoryMB = Annotated[int, Range(0, MAX_MEMORY_MB)]
Bytes = Annotated[int, Range(0, MAX_BYTES, above=True)]
Tokens = Annotated[int, Range(0, MAX_TOKENS, above=True)]
Workers = Annotated[int, Range(0, MAX_WORKERS, above=True)]  # workers, requests or items at once
Attempts = Annotated[int, Range(0, 1000)]  # retries or restarts
Threads = Annotated[int, Field(strict=True, ge=0), AfterValidator(_within_cpus)]  # 0: the default
