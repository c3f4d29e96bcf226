"""Real runs for the reader tests, what each sample must read back as, and the readers users already have.

A run is made the way a user makes it (the `prolongvid` command in a child process); the reference for every
sample is read with the stdlib's tarfile through `shards.layout.Sample`. Each reader is called as its own
documentation shows, unchanged: only the way its rows are handed to `check_read` differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import pyarrow.parquet as pq
from pydantic import BaseModel

from fixtures.videos import CATALOGUE, SynthVideo, can_encode, make_video
from pipeline.core.sample import Conversation, SampleMeta
from shards.layout import Sample

ROOT = Path(__file__).resolve().parents[2]
PROLONGVID = Path(sys.executable).with_name("prolongvid")  # the console script of this venv
SMALL_RAY = ["--set", "ray.progress=false", "--set", "ray.num_cpus=2"]

# The default run's input: different lengths (so the stage union stores a different number of frames per video),
# a variable frame rate and a display rotation. Moving content, so the default visual filter keeps all of them
# (the catalogue's VFR and rotated videos are flat test patterns it rightly rejects).
DEFAULT_INPUT = [CATALOGUE["h264_10s"], CATALOGUE["testsrc2_20s"], CATALOGUE["h264_2min"],
                 SynthVideo("vfr_motion_10s", vfr=True, audio=False), SynthVideo("rotated_motion_10s", rotate=90, audio=False)]  # fmt: skip
DEFAULT_EVAL_FRACTION = 0.3  # by key: testsrc2_20s and vfr_motion_10s are held out, the other three train


def prolongvid(*args: str | Path, timeout_s: float = 600) -> None:
    cmd = [str(PROLONGVID), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
    assert done.returncode == 0, f"prolongvid {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}"


def input_folder(specs: list[SynthVideo], cache: Path, folder: Path) -> Path:
    """The videos copied into `folder` (made once per session in `cache`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        if not can_encode(spec.codec):
            import pytest

            pytest.skip(f"local ffmpeg cannot encode {spec.codec}")
        shutil.copy(make_video(spec, cache), folder / spec.filename)
    return folder


def default_run(cache: Path, work: Path) -> Path:
    """`configs/default.yaml` over DEFAULT_INPUT: small shards and a held-out split, nothing else changed."""
    videos, out = input_folder(DEFAULT_INPUT, cache, work / "videos"), work / "out"
    prolongvid("run", ROOT / "configs" / "default.yaml", "--set", f"input.path={videos}", "--set", f"output.dir={out}",
               "--set", "shards.max_samples=2", "--set", f"shards.eval_fraction={DEFAULT_EVAL_FRACTION}", *SMALL_RAY)  # fmt: skip
    return out


def _turns(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<video>\n{q}"}, {"from": "gpt", "value": a}]


# LLaVA records as found in the wild: int and text ids, extra fields of any JSON type, videos in subfolders.
LLAVA_RECORDS = [
    {"id": 1, "video": "clips/h264_10s.mp4", "conversations": _turns("What moves?", "Colour bars."), "data_source": "demo", "score": 0.5},
    {"id": 2, "video": "clips/h264_10s.mp4", "conversations": _turns("What colour?", "Many."), "tags": ["a", "b"]},
    {"id": "vfr-1", "video": "vfr_10s.mp4", "conversations": _turns("Does it get brighter?", "Yes."), "meta": {"n": 3, "ok": True}},
    {"id": 4, "video": "rotated_10s.mp4", "conversations": _turns("Which half is white?", "The top.")},
    {"id": 5, "video": "clock_10s.mp4", "conversations": _turns("How long?", "Ten seconds."), "data_source": None},
]  # fmt: skip
CLOCK_VIDEOS = {"vfr_10s", "clock_10s"}  # grey level encodes the time shown (fixtures/videos.py CLOCK_RATE)


def llava_run(cache: Path, work: Path) -> Path:
    """`prolongvid import-llava` of LLAVA_RECORDS (its own default config; shards of 2 so there are several)."""
    root = work / "videos"
    input_folder([CATALOGUE["h264_10s"]], cache, root / "clips")
    input_folder([CATALOGUE[n] for n in ("vfr_10s", "rotated_10s", "clock_10s")], cache, root)
    ann, out = work / "annotations.json", work / "out"
    ann.write_text(json.dumps(LLAVA_RECORDS))
    prolongvid("import-llava", ann, root, out, "--set", "shards.max_samples=2", *SMALL_RAY)
    return out


def demo_run(work: Path) -> Path:
    out = work / "demo"
    prolongvid("demo", "--config", ROOT / "configs" / "demo.yaml", "--out", out)
    return out


# ---- the reference ---------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """One sample as the tar holds it, read through `shards.layout.Sample`."""

    key: str
    split: str
    shard: str
    meta: SampleMeta
    conversations: list[Conversation]
    frame_hashes: list[str]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """A tar's members grouped by key (webdataset's rule: the key ends at the first dot of the file name)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, suffix = member.name.split(".", 1)
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            samples.setdefault(key, {"__key__": key})[suffix] = data
    return samples


def shard_entries(run: Path) -> list[dict[str, Any]]:
    return json.loads((run / "shards.json").read_text())


def shard_paths(run: Path, split: str | None = None) -> list[str]:
    entries = [s for s in shard_entries(run) if split is None or s.get("split", "train") == split]
    return [str(run / "shards" / s["name"]) for s in entries]


def index_rows(run: Path) -> list[dict[str, Any]]:
    return pq.read_table(run / "index.parquet").to_pylist()


def reference(run: Path) -> dict[str, Expected]:
    out: dict[str, Expected] = {}
    for entry in shard_entries(run):
        for key, members in tar_samples(run / "shards" / entry["name"]).items():
            sample = Sample(members)
            assert key not in out, f"{key} is in two shards"
            out[key] = Expected(key, entry.get("split", "train"), entry["name"], sample.meta, sample.conversations,
                                [digest(f) for f in sample.frames()])  # fmt: skip
    return out


# ---- the readers -----------------------------------------------------------------------------------------------


@dataclass
class Read:
    """One sample as a reader gave it: its key, the values of its three members as that reader decoded them, and
    the whole row (what the README hands to `shards.layout.Sample`)."""

    key: str
    meta: Any
    frames: Any
    conversations: Any
    row: dict[str, Any]


def _read(row: dict[str, Any], decode_json: bool = False) -> Read:
    value = (lambda v: json.loads(v)) if decode_json else (lambda v: v)
    return Read(row["__key__"], value(row["json"]), row["frames.mjpeg"], value(row["conversations.json"]), row)


def read_hf(paths: list[str], cache_dir: Path) -> list[Read]:
    from datasets import load_dataset

    ds = load_dataset("webdataset", data_files={"train": paths}, split="train", cache_dir=str(cache_dir))
    return [_read(r) for r in ds]


def read_ray(paths: list[str]) -> list[Read]:
    import ray

    rows = ray.data.read_webdataset(paths).take_all()
    return [_read(r) for r in rows]


def read_webloader(paths: list[str]) -> list[Read]:
    import webdataset as wds

    loader = wds.WebLoader(wds.WebDataset(paths, shardshuffle=False), num_workers=2, batch_size=None)
    return [_read(s, decode_json=True) for s in loader]


README_SNIPPET = """\
import json
import webdataset as wds
run = "/data/run1"
shards = [f"{run}/shards/{s['name']}" for s in json.load(open(f"{run}/shards.json")) if s.get("split", "train") == "train"]
ds = wds.WebDataset(shards, shardshuffle=False).decode()
"""


def read_readme_snippet(run: Path) -> list[Read]:
    """The README's reader snippet as written, its example run folder replaced by `run`."""
    code = README_SNIPPET.replace('run = "/data/run1"', f"run = {str(run)!r}")
    assert code != README_SNIPPET
    scope: dict[str, Any] = {}
    exec(compile(code, "README snippet", "exec"), scope)
    return [_read(s) for s in scope["ds"]]


# ---- the checks ------------------------------------------------------------------------------------------------


def type_problems(model: type[BaseModel], value: Any, path: str = "") -> list[str]:
    """Where `value` (a reader's decoded JSON) differs from the model's own field set and types: a missing or
    extra field, a null, an int where the model has a float (or the reverse), a scalar where it has a list."""
    if not isinstance(value, dict):
        return [f"{path or '.'}: {type(value).__name__}, not an object"]
    fields = {f.alias or name: f.annotation for name, f in model.model_fields.items()}
    problems = [f"{path}.{k}: not a field of {model.__name__}" for k in sorted(set(value) - set(fields))]
    problems += [f"{path}.{k}: missing" for k in sorted(set(fields) - set(value))]
    for name, annotation in fields.items():
        if name in value:
            problems += _value_problems(annotation, value[name], f"{path}.{name}")
    return problems


def _value_problems(annotation: Any, value: Any, path: str) -> list[str]:
    if value is None:
        return [f"{path}: null"]
    if get_origin(annotation) is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        (item,) = get_args(annotation)
        return [p for n, v in enumerate(value) for p in _value_problems(item, v, f"{path}[{n}]")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return type_problems(annotation, value, path)
    if type(value) is not annotation:  # exact: bool is an int, and an int in a float field is a type change
        want = getattr(annotation, "__name__", annotation)
        return [f"{path}: {type(value).__name__} {value!r}, the model has {want}"]
    return []


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"


def check_read(expected: Expected, read: Read, reader: str) -> SampleMeta:
    """One reader's sample equals the tar's: the model's types, the same metadata and conversations, and the same
    frames cut from `frames.mjpeg` at the json's offsets, in time order."""
    where = f"{reader} {read.key}"
    assert read.key == expected.key
    assert isinstance(read.meta, dict), f"{where}: json is {type(read.meta).__name__}"
    assert type_problems(SampleMeta, read.meta) == [], where
    meta = SampleMeta.model_validate(read.meta)
    assert meta == expected.meta, f"{where}: the json differs from the tar's"
    assert type(read.meta["video"]["keyframe_interval_s"]) is float and meta.format_version == "2.0"
    # an object, so Ray Data (which unwraps a top-level list of one) keeps a single record a list
    assert isinstance(read.conversations, dict) and set(read.conversations) == {"records"}, f"{where}: {read.conversations!r}"
    records = read.conversations["records"]
    assert isinstance(records, list), f"{where}: conversations.json records are {type(records).__name__}"
    for n, record in enumerate(records):
        assert type_problems(Conversation, record, f"[{n}]") == [], where
    assert [Conversation.model_validate(r) for r in records] == expected.conversations, where
    stream = read.frames
    assert isinstance(stream, bytes), f"{where}: frames.mjpeg is {type(stream).__name__}"
    layout = meta.frames
    assert layout.count == len(layout.offsets) == len(layout.sizes) == len(expected.frame_hashes) > 0, where
    assert layout.offsets[-1] + layout.sizes[-1] == len(stream), f"{where}: bytes past the last frame"
    frames = [stream[o : o + n] for o, n in zip(layout.offsets, layout.sizes)]
    assert all(is_jpeg(f) for f in frames), where
    assert [digest(f) for f in frames] == expected.frame_hashes, f"{where}: other frames than the tar's"
    stored = meta.stored_set()
    assert stored is not None and stored.num_frames == layout.count == len(stored.timestamps_s), where
    times = stored.timestamps_s
    assert all(a < b for a, b in zip(times, times[1:])), f"{where}: frames out of time order"
    sample = Sample(read.row)  # the README: the typed model from any of these readers' rows
    assert sample.key == expected.key and sample.meta == expected.meta, where
    assert sample.conversations == expected.conversations, where
    assert [digest(f) for f in sample.frames()] == expected.frame_hashes, where
    return meta


def check_reader(expected: dict[str, Expected], reads: list[Read], reader: str) -> None:
    """Every expected sample read exactly once, each equal to the tar's."""
    keys = [r.key for r in reads]
    assert sorted(keys) == sorted(expected), f"{reader}: read {sorted(keys)}, the run holds {sorted(expected)}"
    for read in reads:
        check_read(expected[read.key], read, reader)


# ---- layout 1 --------------------------------------------------------------------------------------------------


def layout1_meta(meta: SampleMeta) -> dict[str, Any]:
    """A format-2 sample's metadata in layout 1's shape: maps as dicts, sets keyed by name with stages keyed by
    frame count, the file identity as a list, nulls for unknowns, no format_version and no frames layout."""
    doc = meta.model_dump(mode="json")
    for drop in ("format_version", "frames", "split", "extra_json"):
        doc.pop(drop)
    video = doc["video"]
    ident = video.pop("file_identity")
    video["file_identity"] = [ident["device"], ident["inode"], ident["size"], ident["mtime_ns"]]
    video["keyframe_interval_s"] = video["keyframe_interval_s"] or None
    video["declared_duration_s"] = None
    doc["decode"]["fallback_reason"] = None
    doc["decode"]["sets"] = {s.pop("name"): {**s, "stages": {str(p["frames"]): p["positions"] for p in s["stages"]}}
                             for s in doc["decode"]["sets"]}  # fmt: skip
    for name in ("scores",):
        doc[name] = {e["name"]: e["value"] for e in doc[name]}
    for name in ("counts", "tokens"):
        doc[name] = {e["name"]: e["count"] for e in doc[name]}
    doc["qa"] = {"pairs": [], "declined": [], "dropped": {}}
    doc["would_reject"] = None
    doc["extra"] = None
    return doc


def write_layout1_tar(path: Path, samples: list[tuple[str, list[bytes], dict[str, Any], list[dict[str, Any]]]]) -> None:
    """A layout-1 shard: `<key>.NNNN.jpg` per frame, then `<key>.json` and `<key>.conversations.json`."""
    with tarfile.open(path, "w") as tar:
        for key, frames, meta, conversations in samples:
            members = [(f"{key}.{i:04d}.jpg", f) for i, f in enumerate(frames)]
            members += [(f"{key}.json", json.dumps(meta).encode()),
                        (f"{key}.conversations.json", json.dumps(conversations).encode())]
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
