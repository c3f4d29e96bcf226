"""The README's command blocks, and how the README test runs each: as written, or in its CPU form.

The user's paths (`/data/...`, `/shared/...`, `HEAD`) become small stand-ins;
a few lines have a CPU form (a tiny model instead of a 7B one, a dry run of
the suite that is running them, a quick benchmark); every rewrite is listed
here with its reason, and every other line runs exactly as the README says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNNABLE = ("bash", "python", "console")

# A tiny random model, 2 steps, one rank, on CPU: the stage presets load a 7B checkpoint onto 8 GPUs.
CPU_TRAIN = ("--set model.tiny=true --set model.video_pool_size=4 --set data.image_size=64 --set data.num_workers=0 "
             "--set optim.max_steps=2 --set output.save_every=2 --set nproc_per_node=1 --set parallel=ddp "
             "--set optim.global_batch_size=1")  # fmt: skip

REWRITES: list[tuple[str, str, str]] = [  # (pattern, replacement, why)
    (r"^make test\b.*$", "make -n test", "the suite cannot run itself inside itself: the dry run resolves the target"),
    (r"^make demo\b", "make -o .venv/.installed -o .venv-vllm/.installed demo",
     "the scratch copy borrows this checkout's environments: never reinstall them from the copy"),
    (r"^(?!.*model\.tiny=true)(prolongvid train configs/train/stage\S+.*)$", r"\1 " + CPU_TRAIN,
     "no GPU and no 7B weights here (a line already on the tiny model runs as written)"),
    (r"--set filters\.clip\.arch=ViT-L-14 --set filters\.clip\.weights=openai", "{tiny_clip}",
     "no downloads: a tiny random open_clip built by the test"),
    (r"^(\.venv/bin/python bench/\S+\.py)\b.*$", r"\1 --quick", "the full benchmarks take hours on 2 CPUs"),
    (r"(?m)^import ray$", "import ray\nfrom pipeline.ray_local import start_local_ray\nstart_local_ray({'num_cpus': 1})",
     "the suite's Ray stays on loopback behind a token (`pipeline/ray_local.py`); a user's read_webdataset starts "
     "or joins their own"),
]


@dataclass
class Block:
    line: int  # where it starts in README.md
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        """Lines joined across trailing backslashes; blank and comment-only lines dropped."""
        out, current = [], ""
        for raw in self.text.splitlines():
            if raw.rstrip().endswith("\\"):
                current += raw.rstrip()[:-1].rstrip() + " "
                continue
            line = (current + raw.strip()).strip()
            current = ""
            if line and not line.startswith("#"):
                out.append(line)
        return out

    @property
    def kind(self) -> str:
        """Which test runs it: every runnable block gets exactly one."""
        if self.lang == "console":
            return "console"
        if "ray start" in self.text or "ray job submit" in self.text or "prolongvid ray-stop" in self.text:
            return "cluster"
        return "local"


def readme_blocks() -> list[Block]:
    blocks, lang, start, lines = [], None, 0, []
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip() or "text", n, []
            else:
                blocks.append(Block(start, lang, "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    return [b for b in blocks if b.lang in RUNNABLE]


def cpu_form(command: str, stand_ins: dict[str, str]) -> str:
    """The command with the user's paths replaced and the CPU rewrites applied."""
    for pattern, replacement, _ in REWRITES:
        command = re.sub(pattern, replacement, command)
    for placeholder, value in stand_ins.items():
        command = command.replace(placeholder, value)
    return command


# Demo output lines whose numbers come from the tiny random-weight LLM (its noise decides retries, QA pairs kept,
# caption lengths) or from the bytes that text takes: the README shows one run's; a run must print the label and
# numbers there. Every other line of the README's demo block must be printed exactly (spacing aside).
# The shard count too: Ray decides how many rows each write task gets, so 7 samples pack into 3 or 4 shards.
# How the samples fall into shards follows how Ray hands rows to write tasks (timing), like the LLM's output.
LLM_NOISE = ("LLM ", "QA ", "caption ", "tokens ", "conversations per sample", "frame bytes", "  vs the largest")
TIMING_NOISE = ("shards",)  # whole labels
FIRST_NUMBER_ONLY = ("  split ",)  # the sample count exact, the rest (conversations) noise


def demo_output_block() -> str:
    """The text block the README shows as the demo's output."""
    text = README.read_text()
    start = text.index("```\nrun out/demo\n") + 4
    return text[start : text.index("```", start)]


def _label_value(line: str) -> tuple[str, str]:
    parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
    label = line[: len(line) - len(line.lstrip())] + parts[0]  # an indented label keeps its indent
    return label, " ".join(parts[1].split()) if len(parts) > 1 else ""


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _pattern(value: str, loose_from: int) -> re.Pattern:
    """`value` exactly, except that its numbers from the `loose_from`-th on (from 0) may be any number."""
    out, at = [], 0
    for n, m in enumerate(NUMBER.finditer(value)):
        out.append(re.escape(value[at : m.start()]))
        out.append(NUMBER.pattern if n >= loose_from else re.escape(m.group()))
        at = m.end()
    out.append(re.escape(value[at:]))
    return re.compile("".join(out))


def demo_output_problems(shown: str, printed: str) -> list[str]:
    """README demo lines the printed output does not hold (`...` lines stand for lines left out)."""
    seen: dict[str, list[str]] = {}
    for line in printed.splitlines():
        if line.strip() and not set(line.strip()) <= {"-", " "}:
            label, value = _label_value(line)
            seen.setdefault(label, []).append(value)
    problems = []
    for line in shown.splitlines():
        if not line.strip() or line.strip() == "..." or set(line.strip()) <= {"-", " "}:
            continue
        label, value = _label_value(line)
        values = seen.get(label)
        if not values:
            problems.append(f"{label!r}: not printed")
            continue
        loose_from = (0 if label.startswith(LLM_NOISE) or label in TIMING_NOISE
                      else 1 if label.startswith(FIRST_NUMBER_ONLY) else 10**9)
        want = _pattern(value, loose_from)
        if not any(want.fullmatch(v) for v in values):
            problems.append(f"{label!r}: README {value!r}, printed {values}")
    return problems
