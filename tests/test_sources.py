"""Folders, zips and CSVs of images, in load_files' shape, and their error messages."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest

from tlearn import DataError, load_image_csv, load_image_folder
from tlearn.data import iter_image_paths
from tlearn.data.images import read_bytes


def test_folder_like_load_files(image_folder):
    data = load_image_folder(image_folder)
    assert data.target_names == ["astronaut", "coffee", "rocket"]
    assert len(data.filenames) == 18 and data.target.dtype == np.int64
    for path, t in zip(data.filenames, data.target, strict=True):
        assert f"/{data.target_names[t]}/" in path
    assert np.bincount(data.target).tolist() == [6, 6, 6]
    again = load_image_folder(image_folder)
    assert list(again.filenames) == list(data.filenames)  # same random_state, same order
    unshuffled = load_image_folder(image_folder, shuffle=False)
    assert list(unshuffled.target) == sorted(unshuffled.target)


def test_categories_and_max_per_class(image_folder):
    data = load_image_folder(image_folder, categories=["rocket", "coffee"], max_per_class=4)
    assert data.target_names == ["coffee", "rocket"]
    assert np.bincount(data.target).tolist() == [4, 4]
    with pytest.raises(DataError, match="dgo.*available"):
        load_image_folder(image_folder, categories=["dgo"])


def test_zip_read_in_place(image_folder, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(image_folder.rglob("*.jpg")):
            zf.write(p, f"photos/{p.relative_to(image_folder)}")  # an extra top-level folder
    data = load_image_folder(archive)
    assert data.target_names == ["astronaut", "coffee", "rocket"] and len(data.filenames) == 18
    assert all(f.startswith(f"{archive}/photos/") for f in data.filenames)
    inner = load_image_folder(f"{archive}/photos", shuffle=False)
    on_disk = load_image_folder(image_folder, shuffle=False)
    assert read_bytes(inner.filenames[0]) == read_bytes(on_disk.filenames[0])


def test_zip_members_read_from_threads_a_replaced_archive_and_a_forked_child(tmp_path):
    """One open archive serves every thread; rewritten on disk it is opened again; a forked
    child opens its own (the parent's shares its file offset)."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    archive = tmp_path / "members.zip"
    payload = {f"m/{i:03d}.bin": bytes([i % 251]) * (100 + 37 * i) for i in range(200)}
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (name, data) in enumerate(payload.items()):
            zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if i % 2 else None)
    names = list(payload) * 5
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda n: read_bytes(f"{archive}/{n}"), names))
    assert got == [payload[n] for n in names]
    assert read_bytes(f"{archive}/m/000.bin") == payload["m/000.bin"]
    with zipfile.ZipFile(archive, "w") as zf:  # the same names, new contents
        zf.writestr("m/000.bin", b"new")
    assert read_bytes(f"{archive}/m/000.bin") == b"new"
    with pytest.raises(Exception, match="no member 'm/001.bin'"):
        read_bytes(f"{archive}/m/001.bin")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(read_bytes, [f"{archive}/m/000.bin"] * 4) == [b"new"] * 4


def test_zip_subfolder_read_in_place(shapes_zip):
    data = load_image_folder(f"{shapes_zip}/test", max_per_class=3)
    assert len(data.target_names) == 3 and len(data.filenames) == 9
    assert read_bytes(data.filenames[0])[:2] == b"\xff\xd8"  # a JPEG, read from the zip


def test_missing_empty_and_imageless(tmp_path, image_folder):
    with pytest.raises(DataError, match="no such folder"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty")
    (image_folder / "bird").mkdir()
    (image_folder / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"\['bird'\].*contain no image files"):
        load_image_folder(image_folder)


def test_non_image_files_are_reported_not_silently_dropped(image_folder):
    (image_folder / "coffee" / "readme.txt").write_text("hello")
    with pytest.warns(UserWarning, match="1 file.*not images"):
        data = load_image_folder(image_folder)
    assert data.ignored == [f"{image_folder}/coffee/readme.txt"]
    assert len(data.filenames) == 18


def test_csv_with_relative_paths(image_folder, tmp_path):
    files = sorted(image_folder.rglob("*.jpg"))
    csv_path = image_folder.parent / "labels.csv"
    lines = ["filename,class"] + [
        f"{p.relative_to(csv_path.parent)},{p.parent.name}" for p in files
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    data = load_image_csv(csv_path)
    assert data.target_names == ["astronaut", "coffee", "rocket"]
    assert data.filenames[0] == str(files[0])
    assert data.target_names[data.target[0]] == files[0].parent.name
    unlabelled = tmp_path / "paths.csv"
    unlabelled.write_text("path\n" + "\n".join(str(p) for p in files) + "\n")
    assert load_image_csv(unlabelled).target is None
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg,\n")
    with pytest.raises(DataError, match="empty 'label' on line 2"):
        load_image_csv(bad)


def test_iter_image_paths_expands_folders_zips_globs(image_folder):
    from_folder = list(iter_image_paths([str(image_folder)]))
    assert len(from_folder) == 18
    from_glob = list(iter_image_paths([f"{image_folder}/coffee/*.jpg"]))
    assert len(from_glob) == 6
    shutil.make_archive(str(image_folder.parent / "pack"), "zip", image_folder)
    from_zip = list(iter_image_paths([str(image_folder.parent / "pack.zip")]))
    assert len(from_zip) == 18
    with pytest.raises(DataError, match="matches no files"):
        list(iter_image_paths([f"{image_folder}/*.png"]))
    assert list(iter_image_paths(["missing.jpg"])) == ["missing.jpg"]  # kept: gets an error row


def test_tsv_and_semicolon_files_are_split_on_their_own_separator(image_folder, tmp_path):
    files = sorted(image_folder.rglob("*.jpg"))
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("path\tlabel\n" + "".join(f"{p}\t{p.parent.name}\n" for p in files))
    data = load_image_csv(tsv)
    assert data.target_names == ["astronaut", "coffee", "rocket"]
    assert data.filenames[0] == str(files[0])
    semicolons = tmp_path / "labels.csv"
    semicolons.write_text("path;label\n" + "".join(f"{p};{p.parent.name}\n" for p in files))
    assert list(load_image_csv(semicolons).filenames) == list(data.filenames)


def test_a_link_loop_is_walked_once_and_never_relabels(image_folder):
    """``coffee/loop -> ..`` listed every image 40 more times as 'coffee' (the kernel's link
    limit); with a second loop the walk had 2**40 routes. Each folder is entered once."""
    (image_folder / "coffee" / "loop").symlink_to("..")
    with pytest.warns(UserWarning, match=r"1 symbolic link.*coffee/loop' -> '.*train'"):
        data = load_image_folder(image_folder)
    assert len(data.filenames) == 18 and np.bincount(data.target).tolist() == [6, 6, 6]
    assert len(set(data.filenames)) == 18 and not any("/loop/" in f for f in data.filenames)
    (image_folder / "rocket" / "up").symlink_to("..")
    (image_folder / "rocket" / "self").symlink_to(".")
    for inputs in ([str(image_folder)], [f"{image_folder}/**/*.jpg"]):
        with pytest.warns(UserWarning, match="3 symbolic link"):
            paths = list(iter_image_paths(inputs))
        assert len(paths) == len(set(paths)) == 18, inputs
    with pytest.warns(UserWarning, match="3 symbolic link"):
        assert np.bincount(load_image_folder(image_folder).target).tolist() == [6, 6, 6]


def test_an_image_linked_into_two_classes_is_refused_naming_both(image_folder):
    """The label of an image reached from two class folders is the user's call; silently
    listed twice, it would sit on both sides of a train/test split."""
    folder_link = image_folder / "coffee" / "more"
    folder_link.symlink_to(image_folder / "rocket")
    with pytest.raises(DataError, match=r"coffee/more' \(class 'coffee'\) and .*rocket' \(class"):
        load_image_folder(image_folder)
    folder_link.unlink()
    (image_folder / "coffee" / "odd.jpg").symlink_to(image_folder / "rocket" / "0003.jpg")
    with pytest.raises(DataError, match=r"(?=.*coffee/odd\.jpg)(?=.*rocket/0003\.jpg).*two labels"):
        load_image_folder(image_folder)
    assert len(list(iter_image_paths([str(image_folder)]))) == 19  # predicting: both names


def test_a_second_name_in_the_same_class_is_listed_once(image_folder):
    (image_folder / "coffee" / "again.jpg").symlink_to("0000.jpg")
    (image_folder / "coffee" / "nested").mkdir()
    (image_folder / "coffee" / "nested" / "same").symlink_to("../../coffee")
    with pytest.warns(UserWarning, match=r"2 symbolic link.*again.jpg' -> '.*coffee/0000.jpg'"):
        data = load_image_folder(image_folder, shuffle=False)
    assert np.bincount(data.target).tolist() == [6, 6, 6]


def test_an_empty_class_folder_is_named_in_a_warning(image_folder, tmp_path):
    (image_folder / "bird").mkdir()
    (image_folder / "fish" / "deep").mkdir(parents=True)
    (image_folder / "fish" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning, match=r"class folder\(s\) \['bird', 'fish'\].*are empty"):
        data = load_image_folder(image_folder)
    assert data.target_names == ["astronaut", "coffee", "rocket"]
    with pytest.raises(DataError, match=r"\['bird'\] not found.*are empty folders"):
        load_image_folder(image_folder, categories=["bird"])
    assert len(load_image_folder(image_folder, categories=["coffee"]).filenames) == 6
    archive = tmp_path / "with-empty.zip"
    with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("bird/", b"")
        for p in sorted((image_folder / "coffee").glob("*.jpg")):
            zf.write(p, f"coffee/{p.name}")
            zf.write(p, f"coffee/{p.name}")  # a name stored twice is one image
    with pytest.warns(UserWarning, match=r"\['bird'\].*empty"):
        assert len(load_image_folder(archive).filenames) == 6
    only_empty = tmp_path / "only-empty"
    (only_empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"only empty class folders \['a'\]"):
        load_image_folder(only_empty)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_listing_and_loading_500_files_hold_few_files_and_threads(tmp_path):
    """The budget in tlearn.data.sources' docstring: listing holds no folder open between
    paths; the loader holds at most one file per decoding thread."""
    import threading

    from PIL import Image

    from tlearn.data import Preprocessing, iter_batches

    for i in range(500):
        (tmp_path / f"c{i % 5}" / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(tmp_path / f"c{i % 5}/d{i % 3}/{i}.png")
    before = _open_files()
    paths, most = [], 0
    for p in iter_image_paths([str(tmp_path)]):
        paths.append(p)
        most = max(most, _open_files() - before)
    assert len(paths) == 500 and most == 0
    pre = Preprocessing(input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    threads, files, idle = 0, 0, threading.active_count()
    for batch in iter_batches(paths, pre, batch_size=16, n_workers=2, prefetch=2):
        assert len(batch.errors) == 0
        threads = max(threads, threading.active_count() - idle)
        files = max(files, _open_files() - before)
    assert threads <= 2 and files <= 2


def test_csv_columns_named_twice_are_refused(tmp_path):
    twice = tmp_path / "twice.csv"
    twice.write_text("path,label,path\na.jpg,cat,b.jpg\n")  # which path is meant?
    with pytest.raises(DataError, match="2 columns named 'path'"):
        load_image_csv(twice)


def test_glob_patterns_match_as_glob_does_without_following_loops(image_folder, monkeypatch):
    """Patterns are matched on the loop-safe walk; on a tree without loops they find what
    glob.glob(recursive=True) finds, hidden names and character classes included."""
    import glob

    from tlearn.data.walk import glob_files

    (image_folder / "coffee" / "deep" / ".hid").mkdir(parents=True)
    for name in ("deep/a.jpg", "deep/.b.jpg", "deep/.hid/c.jpg", ".d.jpg", "e.JPG"):
        (image_folder / "coffee" / name).write_bytes(b"x")
    monkeypatch.chdir(image_folder)
    patterns = [
        "**/*.jpg", "coffee/**", "*/00[0-2]?.jpg", "**/.hid/*.jpg", "coffee/.*.jpg",
        "coffee/**/", "*", "**/deep/**/*.jpg", f"{image_folder}/*/*.JPG", f"{image_folder}/**/.*",
    ]  # fmt: skip
    for pattern in patterns:
        want = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        assert glob_files(pattern, []) == want, pattern
