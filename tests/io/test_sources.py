"""Input listing, manifests, sharding and URI hygiene (local, memory:// and a real S3 API)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysegment.errors import InputSpecError
from raysegment.io.sources import Shard, list_inputs, listing_digest, make_shards
from raysegment.uri import join_inside, read_bytes, redact


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _touch(
        tmp_path,
        "b.png",
        "a.png",
        "sub/c.tif",
        "sub/deeper/d.jpg",
        ".hidden.png",
        ".git/config",
        "sub/.cache/e.png",
        "notes.txt",
    )
    return tmp_path


# -- local directory / glob / single file -----------------------------------------------------
def test_directory_is_recursive_sorted_and_skips_hidden(tree: Path) -> None:
    got = list_inputs(str(tree))
    expected = [str(tree / n) for n in ("a.png", "b.png", "notes.txt", "sub/c.tif", "sub/deeper/d.jpg")]
    assert got == expected


def test_directory_inside_hidden_parent_is_still_listed(tmp_path: Path) -> None:
    root = tmp_path / ".venv-like" / "data"
    _touch(root, "x.png")
    assert list_inputs(str(root)) == [str(root / "x.png")]


def test_relative_path_becomes_absolute(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert list_inputs("sub/deeper") == [str(tree / "sub/deeper/d.jpg")]


def test_glob_matches_files_sorted(tree: Path) -> None:
    assert list_inputs(str(tree / "*.png")) == [str(tree / "a.png"), str(tree / "b.png")]
    assert list_inputs(str(tree / "**" / "*.jpg")) == [str(tree / "sub/deeper/d.jpg")]


def test_glob_with_no_match_is_empty_error(tree: Path) -> None:
    with pytest.raises(InputSpecError, match="input is empty: no files match"):
        list_inputs(str(tree / "*.webp"))


def test_single_file_is_one_item(tree: Path) -> None:
    assert list_inputs(str(tree / "sub/c.tif")) == [str(tree / "sub/c.tif")]


def test_file_url_gives_plain_path(tree: Path) -> None:
    assert list_inputs(f"file://{tree}/a.png") == [str(tree / "a.png")]


def test_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InputSpecError, match=f"^input not found: {missing}$"):
        list_inputs(str(missing))


def test_empty_directory(tmp_path: Path) -> None:
    _touch(tmp_path, ".only-hidden")
    with pytest.raises(InputSpecError, match=f"^input is empty: no files under {tmp_path}$"):
        list_inputs(str(tmp_path))


def test_unknown_protocol_is_spec_error() -> None:
    with pytest.raises(InputSpecError, match="nosuchproto"):
        list_inputs("nosuchproto://bucket/x")


def test_missing_gcs_backend_names_the_extra() -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed, so the missing-extra message cannot show")
    with pytest.raises(InputSpecError, match=r"pip install 'raysegment\[gs\]'"):
        list_inputs("gs://bucket/images/")


# -- manifests ------------------------------------------------------------------------------
def test_csv_manifest_keeps_order_and_resolves_relative(tree: Path) -> None:
    manifest = tree / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("id,uri\n1,../sub/c.tif\n2,/abs/z.png\n3,memory://elsewhere/k.png\n4,../a.png\n")
    assert list_inputs(str(manifest)) == [
        str(tree / "sub/c.tif"), "/abs/z.png", "memory://elsewhere/k.png", str(tree / "a.png")
    ]


def test_csv_manifest_missing_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("a,b\n1,2\n")
    with pytest.raises(InputSpecError, match=r"^manifest .*m\.csv has no 'uri' or 'image_uri' column \(columns: a, b\)$"):
        list_inputs(str(manifest))


def test_training_and_eval_manifests_are_inputs_by_their_image_uri(tmp_path: Path) -> None:
    """The manifest a model was trained or scored on (image_uri, mask_uri) can be segmented as it is."""
    _touch(tmp_path, "b.png", "sub/a.png", "i.png", "y.png")
    (tmp_path / "m.csv").write_text("image_uri,mask_uri\nb.png,b_mask.png\nsub/a.png,sub/a_mask.png\n")
    assert list_inputs(str(tmp_path / "m.csv")) == [str(tmp_path / "b.png"), str(tmp_path / "sub/a.png")]
    pq.write_table(pa.table({"mask_uri": ["m.png"], "image_uri": ["i.png"]}), tmp_path / "m.parquet")
    assert list_inputs(str(tmp_path / "m.parquet")) == [str(tmp_path / "i.png")]
    # both columns: uri is the input column
    (tmp_path / "both.csv").write_text("image_uri,uri\nx.png,y.png\n")
    assert list_inputs(str(tmp_path / "both.csv")) == [str(tmp_path / "y.png")]
    (tmp_path / "blank.csv").write_text("image_uri,mask_uri\n,m.png\n")
    with pytest.raises(InputSpecError, match="empty image_uri in data row 1"):
        list_inputs(str(tmp_path / "blank.csv"))


def test_csv_manifest_empty_and_blank_entry(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("uri\n")
    with pytest.raises(InputSpecError, match="input is empty: manifest"):
        list_inputs(str(empty))
    blank = tmp_path / "blank.csv"
    blank.write_text("uri,x\na.png,1\n,2\n")
    with pytest.raises(InputSpecError, match="empty uri in data row 2"):
        list_inputs(str(blank))


def test_parquet_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    _touch(tmp_path, "z.png", "sub/y.png", "a.png")
    pq.write_table(pa.table({"uri": ["z.png", "sub/y.png", "a.png"], "label": [1, 2, 3]}), manifest)
    assert list_inputs(str(manifest)) == [str(tmp_path / n) for n in ("z.png", "sub/y.png", "a.png")]


def test_parquet_manifest_missing_column_and_wrong_type(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.png"], "n": [1]}), manifest)
    with pytest.raises(InputSpecError, match=r"has no 'uri' or 'image_uri' column \(columns: path, n\)"):
        list_inputs(str(manifest))
    pq.write_table(pa.table({"uri": [1, 2]}), manifest)
    with pytest.raises(InputSpecError, match="must hold strings"):
        list_inputs(str(manifest))


def test_corrupt_parquet_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"not parquet at all")
    with pytest.raises(InputSpecError, match="not a readable Parquet file"):
        list_inputs(str(manifest))


# -- memory:// --------------------------------------------------------------------------
@pytest.fixture
def mem_root() -> Iterator[str]:
    root = f"memory://rs-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    for name in ("b/2.png", "a/1.png", "a/.DS_Store", "top.png"):
        fs.pipe(f"{root}/{name}", name.encode())
    yield root
    fs.rm(root, recursive=True)


def test_memory_directory_glob_manifest(mem_root: str) -> None:
    assert list_inputs(mem_root) == [f"{mem_root}/a/1.png", f"{mem_root}/b/2.png", f"{mem_root}/top.png"]
    assert list_inputs(f"{mem_root}/*/*.png") == [f"{mem_root}/a/1.png", f"{mem_root}/b/2.png"]
    fsspec.filesystem("memory").pipe(f"{mem_root}/m.csv", b"uri\nb/2.png\na/1.png\n")
    assert list_inputs(f"{mem_root}/m.csv") == [f"{mem_root}/b/2.png", f"{mem_root}/a/1.png"]
    assert read_bytes(f"{mem_root}/b/2.png") == b"b/2.png"


def test_memory_listing_sees_new_files(mem_root: str) -> None:
    before = list_inputs(mem_root)
    fsspec.filesystem("memory").pipe(f"{mem_root}/a/0.png", b"new")
    assert list_inputs(mem_root) == sorted([*before, f"{mem_root}/a/0.png"])


# -- S3 through a real moto server ------------------------------------------------------------
def _put(bucket: str, endpoint: str, objects: dict[str, bytes]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def test_s3_prefix_listing_and_read(s3_server: str, s3_bucket: str) -> None:
    _put(s3_bucket, s3_server, {"in/b.png": b"B", "in/a/x.png": b"X", "in/.hidden": b"", "other/z.png": b"Z"})
    # No endpoint option: it comes from AWS_ENDPOINT_URL alone.
    assert list_inputs(f"s3://{s3_bucket}/in/") == [f"s3://{s3_bucket}/in/a/x.png", f"s3://{s3_bucket}/in/b.png"]
    assert list_inputs(f"s3://{s3_bucket}") == [
        f"s3://{s3_bucket}/in/a/x.png",
        f"s3://{s3_bucket}/in/b.png",
        f"s3://{s3_bucket}/other/z.png",
    ]
    assert list_inputs(f"s3://{s3_bucket}/in/*.png") == [f"s3://{s3_bucket}/in/b.png"]
    assert read_bytes(f"s3://{s3_bucket}/in/a/x.png") == b"X"


def test_s3_manifest_relative_entries(s3_server: str, s3_bucket: str) -> None:
    _put(s3_bucket, s3_server, {"lists/m.csv": b"uri\n../img/2.png\nimg/1.png\ns3://elsewhere/k.png\n",
                                "img/2.png": b"2", "lists/img/1.png": b"1"})
    assert list_inputs(f"s3://{s3_bucket}/lists/m.csv") == [
        f"s3://{s3_bucket}/img/2.png",
        f"s3://{s3_bucket}/lists/img/1.png",
        "s3://elsewhere/k.png",
    ]


def test_s3_not_found_and_no_stale_listing(s3_server: str, s3_bucket: str) -> None:
    with pytest.raises(InputSpecError, match=f"input not found: s3://{s3_bucket}/data"):
        list_inputs(f"s3://{s3_bucket}/data")
    _put(s3_bucket, s3_server, {"data/1.png": b"1"})
    assert list_inputs(f"s3://{s3_bucket}/data") == [f"s3://{s3_bucket}/data/1.png"]
    _put(s3_bucket, s3_server, {"data/0.png": b"0"})
    assert list_inputs(f"s3://{s3_bucket}/data") == [f"s3://{s3_bucket}/data/0.png", f"s3://{s3_bucket}/data/1.png"]
    # The listing above filled s3fs's per-instance directory cache; a file added
    # since must still be found (a stale cache answers "not found").
    _put(s3_bucket, s3_server, {"data/new.png": b"n"})
    assert list_inputs(f"s3://{s3_bucket}/data/new.png") == [f"s3://{s3_bucket}/data/new.png"]


def test_s3_missing_object_read(s3_server: str, s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(f"s3://{s3_bucket}/nothing.png")


# -- sharding / digest -------------------------------------------------------------------------
def test_make_shards_chunks_and_edges() -> None:
    uris = [f"u{i}" for i in range(7)]
    shards = make_shards(uris, 3)
    assert shards == [
        Shard(0, 0, ("u0", "u1", "u2")),
        Shard(1, 3, ("u3", "u4", "u5")),
        Shard(2, 6, ("u6",)),
    ]
    assert make_shards(uris, 3) == shards  # deterministic
    assert make_shards(uris, 7) == [Shard(0, 0, tuple(uris))]
    assert make_shards(uris, 100) == [Shard(0, 0, tuple(uris))]
    assert [s.uris for s in make_shards(uris, 1)] == [(u,) for u in uris]
    assert make_shards([], 5) == []
    for bad in (0, -1):
        with pytest.raises(ValueError, match="shard_size"):
            make_shards(uris, bad)


def test_listing_digest() -> None:
    uris = ["s3://b/a.png", "s3://b/b.png"]
    assert listing_digest(uris) == hashlib.sha256(b"s3://b/a.png\ns3://b/b.png").hexdigest()
    assert listing_digest(uris) != listing_digest(list(reversed(uris)))
    assert listing_digest([]) == hashlib.sha256(b"").hexdigest()


# -- redact / join_inside ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://KEY:SECRET@bucket/x", "s3://bucket/x"),
        ("https://user@host/p", "https://host/p"),
        (
            "https://h/o.png?X-Amz-Algorithm=A&X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&X-Amz-Security-Token=t",
            "https://h/o.png?X-Amz-Algorithm=A&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
            "&X-Amz-Security-Token=REDACTED",
        ),
        ("https://a.blob/c/x.tif?sv=2020&sig=abc%3D", "https://a.blob/c/x.tif?sv=2020&sig=REDACTED"),
        ("gs://b/x?apiKey=1&PASSWORD=2&page=3", "gs://b/x?apiKey=REDACTED&PASSWORD=REDACTED&page=3"),
        ("/data/user:pw@x/a.png", "/data/user:pw@x/a.png"),
        ("relative/a.png", "relative/a.png"),
        ("s3://bucket/key.png", "s3://bucket/key.png"),
    ],
)
def test_redact(uri: str, expected: str) -> None:
    assert redact(uri) == expected


def test_spec_errors_are_redacted() -> None:
    with pytest.raises(InputSpecError) as info:
        list_inputs("nosuchproto://AKIA:supersecret@bucket/x")
    assert "supersecret" not in str(info.value)


@pytest.mark.parametrize(
    ("root", "rel", "expected"),
    [
        ("/out", "a/b.png", "/out/a/b.png"),
        ("/out/", "./a//b.png", "/out/a/b.png"),
        ("s3://bucket/run", "masks/x.parquet", "s3://bucket/run/masks/x.parquet"),
        ("s3://bucket", "x", "s3://bucket/x"),
        ("/", "x", "/x"),
    ],
)
def test_join_inside(root: str, rel: str, expected: str) -> None:
    assert join_inside(root, rel) == expected


@pytest.mark.parametrize("rel", ["", ".", "/etc/passwd", "../x", "a/../../x", "a/..", "..\\x", "C:\\x", "s3://other/x"])
def test_join_inside_rejects_escapes(rel: str) -> None:
    with pytest.raises(ValueError):
        join_inside("s3://bucket/out", rel)
