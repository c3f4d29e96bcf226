"""`prolongvid stats --verify`: re-read every shard and check it against what the run recorded.

Checks: each listed shard exists with the recorded size and sha256; each tar
parses; every sample has its metadata, conversations and a contiguous run of
JPEG frames (SOI/EOI markers present); the index and the shards hold the same
keys in the same shards, with the same frame counts; no key appears twice and
no unlisted tar sits in shards/. Returns human-readable problems (empty: OK).
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from typing import Any

from shards.layout import CONVERSATIONS_MEMBER, FRAME_MEMBER, META_MEMBER, RunDir
from shards.rows import row_totals
from shards.reader import HashingReader, iter_tar_samples, read_index, read_run_json, read_shard_list


def _check_sample(shard: str, key: str, members: dict[str, bytes]) -> tuple[list[str], int]:
    problems = []
    where = f"{shard}: sample {key}"
    for needed in (META_MEMBER, CONVERSATIONS_MEMBER):
        if needed not in members:
            problems.append(f"{where}: missing {needed}")
        else:
            try:
                json.loads(members[needed])
            except ValueError:
                problems.append(f"{where}: {needed} is not valid JSON")
    frames = sorted(int(m.group(1)) for m in (FRAME_MEMBER.match(k) for k in members) if m)
    if frames != list(range(len(frames))):
        problems.append(f"{where}: frames are not numbered 0..{len(frames) - 1} without gaps")
    for i in frames:
        data = members[f"{i:04d}.jpg"]
        if not (data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"):
            problems.append(f"{where}: frame {i:04d}.jpg is not a complete JPEG")
            break
    unknown = [k for k in members if not FRAME_MEMBER.match(k) and k not in (META_MEMBER, CONVERSATIONS_MEMBER)]
    if unknown:
        problems.append(f"{where}: unexpected members {unknown}")
    return problems, len(frames)


def verify_run(run: RunDir) -> list[str]:
    problems: list[str] = []
    listed = read_shard_list(run)
    index = read_index(run)
    by_shard: dict[str, dict[str, Any]] = {}
    for row in index:
        by_shard.setdefault(row["shard"], {})[row["key"]] = row
    dupes = [k for k, n in Counter(r["key"] for r in index).items() if n > 1]
    if dupes:
        problems.append(f"index.parquet: keys listed more than once: {dupes[:5]}")
    names = {s["name"] for s in listed}
    for extra in sorted(set(by_shard) - names):
        problems.append(f"index.parquet: shard {extra} is not in shards.json")
    on_disk = {p.name for p in run.shards.glob("*.tar")}
    for stray in sorted(on_disk - names):
        problems.append(f"shards/{stray}: not listed in shards.json (left by another run?)")
    seen: set[str] = set()
    for shard in listed:
        name, path = shard["name"], run.shards / shard["name"]
        if not path.exists():
            problems.append(f"shards/{name}: missing")
            continue
        size = path.stat().st_size
        if size != shard["bytes"]:
            problems.append(f"shards/{name}: {size} bytes, {shard['bytes']} recorded (truncated or altered)")
        expected = by_shard.get(name, {})
        found: set[str] = set()
        with open(path, "rb") as raw:
            stream = HashingReader(raw)  # one read of the shard: parsed and hashed together
            try:
                for key, members in iter_tar_samples(stream):
                    if key in found or key in seen:
                        problems.append(f"shards/{name}: sample {key} appears more than once")
                    found.add(key)
                    sample_problems, nframes = _check_sample(f"shards/{name}", key, members)
                    problems.extend(sample_problems)
                    row = expected.get(key)
                    if row is None:
                        problems.append(f"shards/{name}: sample {key} is not in index.parquet")
                    elif row.get("frames_stored") is not None and row["frames_stored"] != nframes:
                        problems.append(f"shards/{name}: sample {key} has {nframes} frames, index says {row['frames_stored']}")
            except (tarfile.TarError, OSError, EOFError) as e:
                problems.append(f"shards/{name}: unreadable tar after {len(found)} samples ({e})")
            digest = stream.hexdigest()
        if digest != shard["sha256"]:
            problems.append(f"shards/{name}: sha256 {digest[:16]}... differs from the recorded {shard['sha256'][:16]}...")
        for missing in sorted(set(expected) - found):
            problems.append(f"shards/{name}: index.parquet lists {missing} but the shard does not hold it")
        if len(found) != shard.get("samples", len(found)):
            problems.append(f"shards/{name}: {len(found)} samples, {shard['samples']} recorded")
        seen |= found
    return problems + _row_accounting(run)


def _row_accounting(run: RunDir) -> list[str]:
    """Every input row ends as a sample's, a reject's or a skipped one: the tables must add up to the input."""
    totals = read_run_json(run).get("totals") or {}
    if "input_rows" not in totals:
        return []  # a run of a version that did not count its input
    have = row_totals(run)
    if have["unnumbered_rows"]:
        return []  # rows of an older version, merged by key: what they stood for is not known
    accounted = have["sample_rows"] + have["reject_rows"] + int(totals.get("skipped_rows", 0))
    if accounted == totals["input_rows"]:
        return []
    return [f"rows: the input has {totals['input_rows']} rows but {have['sample_rows']} are samples', "
            f"{have['reject_rows']} rejects' and {totals.get('skipped_rows', 0)} skipped ({accounted}): "
            "rows were lost or counted twice"]
