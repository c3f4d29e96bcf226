"""The storage seam behaves the same on a local folder and on a real S3 API server (loopback): create-only
writes refuse a second writer, ranged reads return exactly the bytes asked, listing is by prefix and sorted."""

from __future__ import annotations

import pytest

from pipeline.core.storage import AlreadyExists, NotFound, Storage, is_remote
from fixtures.s3server import make_bucket, s3_env, s3_server


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        make_bucket(endpoint, "runs")
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "local":
        return Storage(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    for key, value in s3_env(endpoint).items():
        monkeypatch.setenv(key, value)
    return Storage(f"s3://runs/{tmp_path.name}")


def test_put_get_and_create_only(storage):
    storage.put(".ledger/commits/shard-000001.json", b'{"rows": 1}', create_only=True)
    with pytest.raises(AlreadyExists, match="shard-000001.json already exists"):
        storage.put(".ledger/commits/shard-000001.json", b'{"rows": 2}', create_only=True)
    assert storage.get(".ledger/commits/shard-000001.json") == b'{"rows": 1}'  # the first writer's bytes stay
    storage.put("run.json", b"1")
    storage.put("run.json", b"22")  # a plain put replaces
    assert storage.get("run.json") == b"22" and storage.head("run.json").size == 2


def test_ranged_reads_and_metadata(storage):
    data = bytes(range(256)) * 40
    storage.put("shards/a.tar", data)
    assert storage.get_range("shards/a.tar", 1000, 1010) == data[1000:1010]
    assert storage.get_range("shards/a.tar", 5, 5) == b""
    assert b"".join(storage.stream("shards/a.tar", chunk_size=4096)) == data
    first = storage.head("shards/a.tar")
    assert first.size == len(data) and first.etag
    storage.put("shards/a.tar", data[::-1])
    assert storage.head("shards/a.tar").etag != first.etag  # a changed object is seen as changed


def test_missing_objects_and_idempotent_delete(storage):
    with pytest.raises(NotFound, match="no such object"):
        storage.get("nope.json")
    assert not storage.exists("nope.json")
    storage.put("x.bin", b"x")
    storage.delete("x.bin")
    storage.delete("x.bin")  # a retried cleanup is not an error
    assert not storage.exists("x.bin")


def test_listing_is_by_prefix_and_sorted(storage):
    for name in ["videos/b.mp4", "videos/a.mp4", "videos/sub/c.mkv", "other/d.mp4"]:
        storage.put(name, b"v")
    listed = [info.path for page in storage.list_pages("videos/") for info in page]
    assert sorted(listed) == ["videos/a.mp4", "videos/b.mp4", "videos/sub/c.mkv"]
    assert [info.path for page in storage.list_pages("missing/") for info in page] == []


def test_remote_roots_are_told_apart():
    assert is_remote("s3://bucket/run") and is_remote("gs://b/p") and not is_remote("/data/run")


def test_credentials_from_the_shared_files_chain(s3_endpoint, tmp_path, monkeypatch):
    """No key in the environment: the shared credentials file (as boto3 reads it) is enough."""
    from fixtures.s3server import CREDENTIALS

    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {CREDENTIALS['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
    for key, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    storage = Storage("s3://runs/chain")
    storage.put("a", b"1", create_only=True)
    assert storage.get("a") == b"1" and "testing-secret" not in repr(storage)


def _get_in_child(storage, result):
    from pipeline.core.storage import StorageError

    try:
        storage.get("a")
        result.put("read")
    except StorageError as e:
        result.put(str(e))


def test_a_forked_child_fails_with_a_message_instead_of_hanging(tmp_path):
    """The store's client does not survive a fork: a child forked after the parent used it is told so."""
    import multiprocessing

    storage = Storage(tmp_path / "root")
    storage.put("a", b"1")
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_get_in_child, args=(storage, result))
    child.start()
    child.join(60)
    assert child.exitcode == 0, "the child hung or died"
    assert "forked after its parent used the object store" in result.get(timeout=5)


def test_in_fresh_process_reads_without_starting_the_client_here(tmp_path):
    from pipeline.core.storage import in_fresh_process

    Storage(tmp_path / "root").put("a", b"xyz")
    assert in_fresh_process(_read_a, str(tmp_path / "root")) == b"xyz"


def _read_a(root):
    return Storage(root).get("a")
