"""`stats --verify` names every problem kind it promises, each planted on its own in a copy of a good run."""

from __future__ import annotations

import io
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest

from shards import ledger
from shards.commit import begin_generation, commit_shard
from shards.layout import RunDir, sample_from_sections
from shards.tarwriter import ShardFile
from shards.verify import verify_run


def _commit(run: RunDir, gen: int, name: str, keys: list[str], frames: int = 3) -> None:
    f = ShardFile(run.shards, name)
    for k in keys:
        f.write(sample_from_sections(k, [b"\xff\xd8" + bytes([i]) * 64 + b"\xff\xd9" for i in range(frames)], {"key": k}, []))
    info = f.close()
    commit_shard(run, gen, info, [{"key": k, "shard": name, "frames_stored": frames} for k in keys])


@pytest.fixture
def good(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "good").make()
    gen = begin_generation(run)
    _commit(run, gen, "s1.tar", ["a", "b"])
    _commit(run, gen, "s2.tar", ["c"])
    ledger.write_tables(run)
    assert verify_run(run) == []
    return run


def _retar(path, edit) -> None:
    """Rewrite a tar through `edit(list of (name, bytes)) -> list of (name, bytes)`."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _index_edit(run: RunDir, edit) -> None:
    rows = pq.read_table(run.index).to_pylist()
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(edit(rows)), run.index)


CASES = {
    "missing sample": (lambda run: _retar(run.shards / "s1.tar", lambda m: [x for x in m if not x[0].startswith("b.")]),
                       "index.parquet lists b but the shard does not hold it"),
    "duplicate sample": (lambda run: _retar(run.shards / "s2.tar", lambda m: m + m), "sample c appears more than once"),
    "frame count": (lambda run: _index_edit(run, lambda rows: [r | {"frames_stored": 5} if r["key"] == "a" else r for r in rows]),
                    "sample a has 3 frames, index says 5"),
    "stray file": (lambda run: (run.shards / "left-over.tar").write_bytes(b"x" * 1024),
                   "shards/left-over.tar: not listed in shards.json"),
    "index row without shard": (lambda run: _index_edit(run, lambda rows: rows + [rows[0] | {"key": "z", "shard": "gone.tar"}]),
                                "shard gone.tar is not in shards.json"),
    "sample not in index": (lambda run: _index_edit(run, lambda rows: [r for r in rows if r["key"] != "c"]),
                            "sample c is not in index.parquet"),
    "key twice in the index": (lambda run: _index_edit(run, lambda rows: rows + [rows[0]]), "keys listed more than once"),
    "flipped byte": (lambda run: _flip(run.shards / "s2.tar"), "differs from the recorded"),
    "truncated shard": (lambda run: _cut(run.shards / "s1.tar"), "recorded (truncated or altered)"),
    "missing shard": (lambda run: (run.shards / "s2.tar").unlink(), "shards/s2.tar: missing"),
}


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01
    path.write_bytes(bytes(data))


def _cut(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(1536)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_verify_names_the_problem(good, tmp_path, kind):
    plant, says = CASES[kind]
    copy = RunDir(shutil.copytree(good.root, tmp_path / "copy"))
    plant(copy)
    problems = verify_run(copy)
    assert any(says in p for p in problems), problems
