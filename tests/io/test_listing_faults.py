"""Faults an input listing meets: symbolic links, special files, an OUTPUT inside the INPUT,
output folders, manifest duplicates and missing files, and names holding glob characters.

All on real files (real ``os.symlink``, a real FIFO) and, for the LIST-call count, a real S3 API.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import fsspec
import pytest

from raysegment.errors import InputSpecError, ItemError
from raysegment.io.entries import entry_problem, read_item
from raysegment.io.sources import OUTPUT_MARKER, list_inputs, refuse_output_inside_input
from raysegment.uri import open_ranged, read_bytes


def _write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _outcome(uri: str) -> str:
    """'ok' when the item reads, else the read's one line (what its error row would say)."""
    try:
        read_item(uri)
    except ItemError as exc:
        return str(exc)
    return "ok"


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """An input folder with every kind of link and special file, and a folder outside it."""
    inp, outside = tmp_path / "in", tmp_path / "outside"
    _write(inp / "plain.png", b"plain")
    _write(inp / "sub" / "deep.png", b"deep")
    _write(outside / "target.png", b"target")
    _write(outside / "linked_dir" / "inner.png", b"inner")
    os.symlink(outside / "target.png", inp / "good_link.png")
    os.symlink("/gone/x.png", inp / "dangling.png")
    os.symlink("loop_b.png", inp / "loop_a.png")
    os.symlink("loop_a.png", inp / "loop_b.png")
    os.symlink(inp, inp / "sub" / "up")  # a link to a folder that contains it
    os.symlink(outside / "linked_dir", inp / "ext")  # followed once
    os.symlink(outside / "linked_dir", inp / "ext_again")  # the same folder: not listed twice
    os.symlink(inp / "sub", inp / "sub_alias")  # a folder already listed
    os.mkfifo(inp / "pipe.png")
    os.symlink(inp / "pipe.png", inp / "pipe_link.png")
    os.symlink(outside / "target.png", inp / ".hidden_link.png")
    return inp, outside


def test_every_entry_of_a_directory_is_an_item_and_bad_links_say_what_they_are(linked) -> None:
    inp, _ = linked
    outcomes = {uri: _outcome(uri) for uri in list_inputs(str(inp))}
    expected = {
        "plain.png": "ok",
        "sub/deep.png": "ok",
        "good_link.png": "ok",  # under the link's own path
        "ext/inner.png": "ok",  # a linked folder, followed once
        "dangling.png": f"broken symbolic link {inp}/dangling.png -> /gone/x.png: its target does not exist",
        "loop_a.png": f"symbolic link loop at {inp}/loop_a.png -> loop_b.png",
        "loop_b.png": f"symbolic link loop at {inp}/loop_b.png -> loop_a.png",
        "sub/up": f"symbolic link loop at {inp}/sub/up -> {inp}: it links to a folder that contains it",
        "ext_again": f"symbolic link {inp}/ext_again -> {inp.parent}/outside/linked_dir is a link to a directory; "
                     "not followed",
        "sub_alias": f"symbolic link {inp}/sub_alias -> {inp}/sub is a link to a directory; not followed",
        "pipe.png": f"{inp}/pipe.png is not a regular file (a FIFO)",
        "pipe_link.png": f"symbolic link {inp}/pipe_link.png -> {inp}/pipe.png: its target is not a regular file (a FIFO)",
    }
    # one item per entry seen (the hidden link aside, as hidden files are), each exactly once
    assert sorted(outcomes) == sorted(f"{inp}/{name}" for name in expected)
    for name, want in expected.items():
        got = outcomes[f"{inp}/{name}"]
        assert got == want if want == "ok" else got.startswith(want), (name, got)
    assert read_item(f"{inp}/good_link.png") == b"target"
    assert read_item(f"{inp}/ext/inner.png") == b"inner"


def test_a_glob_lists_links_and_does_not_enter_linked_folders(linked) -> None:
    inp, _ = linked
    got = {uri.rsplit("/", 1)[1]: _outcome(uri) for uri in list_inputs(f"{inp}/*")}
    assert sorted(got) == sorted(["plain.png", "good_link.png", "dangling.png", "loop_a.png", "loop_b.png",
                                  "ext", "ext_again", "sub_alias", "pipe.png", "pipe_link.png"])
    assert got["good_link.png"] == "ok" and got["plain.png"] == "ok"
    assert got["ext"].startswith(f"symbolic link {inp}/ext -> ") and "is a link to a directory; not followed" in got["ext"]
    assert list_inputs(f"{inp}/*.png") == sorted(f"{inp}/{n}" for n in (
        "dangling.png", "good_link.png", "loop_a.png", "loop_b.png", "pipe.png", "pipe_link.png", "plain.png"))


def test_special_files_are_refused_unopened(linked) -> None:
    """Opening a FIFO would wait for a writer: every read path refuses it at once."""
    inp, _ = linked
    local = fsspec.filesystem("file")
    for reader in (read_item, read_bytes, lambda uri: open_ranged(local, uri)):  # whole reads and tiled range reads
        for name in ("pipe.png", "pipe_link.png"):
            with pytest.raises(ItemError, match="not a regular file"):
                reader(f"{inp}/{name}")
    assert entry_problem(f"{inp}/plain.png") is None and entry_problem(f"{inp}/missing.png") is None
    with pytest.raises(FileNotFoundError):
        read_item(f"{inp}/missing.png")  # a missing file is "file not found", as on any store


def test_a_link_as_the_input_itself(linked, tmp_path: Path) -> None:
    inp, outside = linked
    assert list_inputs(str(inp / "good_link.png")) == [str(inp / "good_link.png")]
    with pytest.raises(InputSpecError, match=f"^input: broken symbolic link {inp}/dangling.png -> /gone/x.png: "):
        list_inputs(str(inp / "dangling.png"))
    with pytest.raises(InputSpecError, match=f"^input: symbolic link loop at {inp}/loop_a.png -> loop_b.png"):
        list_inputs(str(inp / "loop_a.png"))
    os.symlink(outside, tmp_path / "folder_link")  # a linked input folder is listed under the link's path
    assert list_inputs(str(tmp_path / "folder_link")) == [str(tmp_path / "folder_link" / n)
                                                         for n in ("linked_dir/inner.png", "target.png")]


# -- OUTPUT inside INPUT; output folders --------------------------------------------------------
def test_output_inside_the_input_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    inp = tmp_path / "data"
    _write(inp / "a.png")
    for out in (inp / "out", inp, inp / "deep" / "er"):
        with pytest.raises(InputSpecError, match=f"^output {out} lies inside the input folder {inp}: .*outside the input"):
            refuse_output_inside_input(str(inp), str(out))
    os.symlink(inp, tmp_path / "alias")  # the same folder by another name
    with pytest.raises(InputSpecError, match="lies inside the input folder"):
        refuse_output_inside_input(str(inp), str(tmp_path / "alias" / "out"))
    refuse_output_inside_input(str(inp), str(tmp_path / "data-out"))  # beside it: fine
    refuse_output_inside_input(str(inp / "a.png"), str(inp / "out"))  # a single file
    (inp / "m.csv").write_text("uri\na.png\n")
    refuse_output_inside_input(str(inp / "m.csv"), str(inp / "out"))  # a manifest names its files


def test_output_a_glob_could_match_is_refused(tmp_path: Path) -> None:
    inp = tmp_path / "data"
    _write(inp / "a.png")
    refuse_output_inside_input(f"{inp}/*.png", str(inp / "out"))  # cannot match anything inside out/
    refuse_output_inside_input(f"{inp}/*", str(inp / "out"))  # matches out itself, a folder: skipped
    for pattern in (f"{inp}/**/*.png", f"{inp}/*/*.tif", f"{inp}/o*/*"):
        with pytest.raises(InputSpecError, match=f"^output {inp}/out lies inside the folder {inp} that the input glob"):
            refuse_output_inside_input(pattern, str(inp / "out"))


def test_memory_output_inside_memory_input_is_refused() -> None:
    fsspec.filesystem("memory").pipe("memory://rs-guard/in/a.png", b"a")
    with pytest.raises(InputSpecError, match="lies inside the input folder"):
        refuse_output_inside_input("memory://rs-guard/in", "memory://rs-guard/in/out")
    refuse_output_inside_input("memory://rs-guard/in", "/tmp/rs-guard/in/out")  # another store


def test_raysegment_output_folders_under_the_input_are_skipped(tmp_path: Path, caplog) -> None:
    inp = tmp_path / "data"
    _write(inp / "a.png")
    run = inp / "old_run"
    for name in (OUTPUT_MARKER, "_SUCCESS", "part-000000.parquet", "_masks/a.tif"):
        _write(run / name)
    with caplog.at_level(logging.WARNING, logger="raysegment"):
        assert list_inputs(str(inp)) == [str(inp / "a.png")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"skipped 4 file(s) in 1 raysegment output folder(s) under the input ({run})" \
        in warnings[0], warnings
    _write(inp / "b.tif")
    assert list_inputs(f"{inp}/**/*.tif") == [str(inp / "b.tif")]  # a glob skips them too
    # an output folder given as the input itself is listed as asked
    assert list_inputs(str(run)) == sorted(str(run / n) for n in (OUTPUT_MARKER, "_SUCCESS", "_masks/a.tif",
                                                                  "part-000000.parquet"))


# -- manifests: duplicates, missing files -----------------------------------------------------------
def test_duplicate_uris_stay_items_with_one_warning(tmp_path: Path, caplog) -> None:
    for name in ("a.png", "b.png"):
        _write(tmp_path / name)
    (tmp_path / "m.csv").write_text("uri\na.png\nb.png\na.png\nb.png\na.png\n")
    with caplog.at_level(logging.WARNING, logger="raysegment"):
        uris = list_inputs(str(tmp_path / "m.csv"))
    assert uris == [str(tmp_path / n) for n in ("a.png", "b.png", "a.png", "b.png", "a.png")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"lists 3 duplicate URI(s) (first: {tmp_path / 'a.png'})" in warnings[0]


def test_missing_manifest_files_are_counted_before_anything_starts(tmp_path: Path, caplog) -> None:
    _write(tmp_path / "img" / "0.png")
    names = ["img/0.png", *(f"img/{i}.png" for i in range(1, 8)), "gone/9.png"]
    (tmp_path / "m.csv").write_text("uri\n" + "\n".join(names) + "\n")
    with caplog.at_level(logging.WARNING, logger="raysegment"):
        assert len(list_inputs(str(tmp_path / "m.csv"))) == 9  # missing files stay items: "not found" rows
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    first = ", ".join(str(tmp_path / f"img/{i}.png") for i in (1, 2, 3))
    assert f"8 of the 9 file(s) listed in manifest {tmp_path / 'm.csv'} do not exist (first: {first}, ...)" in warnings[0]
    (tmp_path / "none.csv").write_text("uri\nimg/1.png\ngone/2.png\n")
    with pytest.raises(InputSpecError, match=r"^none of the 2 file\(s\) listed in manifest .*none\.csv exist"):
        list_inputs(str(tmp_path / "none.csv"))


def test_s3_manifest_is_checked_with_one_list_per_prefix_not_a_head_per_file(s3_server: str, s3_bucket: str,
                                                                           caplog) -> None:
    import boto3

    from raysegment.uri import filesystem

    client = boto3.client("s3", endpoint_url=s3_server)
    for i in range(5):
        client.put_object(Bucket=s3_bucket, Key=f"a/{i}.png", Body=b"x")
    entries = [f"a/{i}.png" for i in range(30)] + [f"b/{i}.png" for i in range(30)]
    client.put_object(Bucket=s3_bucket, Key="m.csv", Body=("uri\n" + "\n".join(entries) + "\n").encode())
    fs, _ = filesystem(f"s3://{s3_bucket}", None)
    fs.ls(s3_bucket)  # connect, so the client below is the one the listing uses
    calls: list[str] = []

    def record(model, **_) -> None:
        calls.append(model.name)

    fs.s3.meta.events.register("before-call.s3", record)
    try:
        with caplog.at_level(logging.WARNING, logger="raysegment"):
            assert len(list_inputs(f"s3://{s3_bucket}/m.csv")) == 60
    finally:
        fs.s3.meta.events.unregister("before-call.s3", record)
    after_manifest = calls[calls.index("GetObject") + 1:]
    assert "HeadObject" not in after_manifest and 2 <= after_manifest.count("ListObjectsV2") <= 4, calls
    assert any(f"55 of the 60 file(s) listed in manifest s3://{s3_bucket}/m.csv do not exist" in r.getMessage()
               for r in caplog.records)


# -- glob characters in names ---------------------------------------------------------------------
def test_names_with_glob_characters_are_themselves(tmp_path: Path) -> None:
    for name in ("a?b.png", "axb.png", "c[1].png", "c1.png", "scan[1]/x.png", "scan1/y.png"):
        _write(tmp_path / name)
    assert list_inputs(str(tmp_path / "a?b.png")) == [str(tmp_path / "a?b.png")]
    assert list_inputs(str(tmp_path / "c[1].png")) == [str(tmp_path / "c[1].png")]
    assert list_inputs(str(tmp_path / "scan[1]")) == [str(tmp_path / "scan[1]/x.png")]
    # the documented escape: a bracketed glob character inside a pattern is literal
    assert list_inputs(f"{tmp_path}/*[?]*") == [str(tmp_path / "a?b.png")]
    assert list_inputs(f"{tmp_path}/scan[[]1]/*.png") == [str(tmp_path / "scan[1]/x.png")]
    assert list_inputs(f"{tmp_path}/a?b.png") == [str(tmp_path / "a?b.png")]  # exists as written: not a glob
    assert list_inputs(f"{tmp_path}/a[x?]b.png") == [str(tmp_path / "a?b.png"), str(tmp_path / "axb.png")]


def test_a_url_query_string_is_never_a_glob() -> None:
    """Nothing is fetched: a URL is one item, read (and reported) where it is decoded."""
    url = "https://example.invalid/tiles/x.png?X-Amz-Signature=abc&v=[1]"
    assert list_inputs(url) == [url]
