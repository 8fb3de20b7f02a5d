"""md5-verified downloads, against a local HTTP server on 127.0.0.1 serving copies of the real Omniglot files."""

from __future__ import annotations

import doctest
import functools
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import lightning_meta.data.download as download_module
from lightning_meta.data.download import ChecksumError, cache_path, download_file, load_or_build, md5sum
from lightning_meta.data.omniglot import Omniglot


class Server:
    """Serves the files of a folder on 127.0.0.1 and records the paths requested."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet, but record
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path: Path, data_root: Path) -> Iterator[Server]:
    """Copies of the real Omniglot zips and Vinyals split files, served over HTTP from 127.0.0.1."""
    folder = tmp_path / "served"
    shutil.copytree(data_root / "omniglot", folder, ignore=shutil.ignore_patterns("*small*"))
    server = Server(folder)
    yield server
    server.close()


@pytest.fixture
def local_tables(served: Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point Omniglot.URLS at the local server and Omniglot.MD5 at the md5 of the served copies."""
    urls = {relative: f"{served.url}/{relative}" for relative in Omniglot.URLS}
    md5 = {relative: md5sum(served.folder / relative) for relative in Omniglot.URLS}
    monkeypatch.setattr(Omniglot, "URLS", urls)
    monkeypatch.setattr(Omniglot, "MD5", md5)
    return md5


def test_download_file_verifies_md5_then_renames(served, tmp_path):
    source = served.folder / "splits" / "vinyals" / "val.txt"
    destination = tmp_path / "out" / "val.txt"
    path = download_file(f"{served.url}/splits/vinyals/val.txt", destination, md5=md5sum(source))
    assert path == destination and destination.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["val.txt"]  # no temporary left


def test_download_file_with_wrong_checksum_names_file_and_digests_and_leaves_nothing(served, tmp_path):
    destination = tmp_path / "out" / "images_background.zip"
    official = "68d2efa1b9178cc56df9314c21c6e718"  # the official zip's md5; the served rebuild differs
    actual = md5sum(served.folder / "images_background.zip")
    assert actual != official
    with pytest.raises(ChecksumError, match=rf"images_background\.zip .* has md5 {actual}, expected {official}"):
        download_file(f"{served.url}/images_background.zip", destination, md5=official)
    assert list(destination.parent.iterdir()) == []


def test_download_file_http_error_is_an_oserror_and_leaves_nothing(served, tmp_path):
    with pytest.raises(OSError, match=r"Could not download missing\.zip from http://127\.0\.0\.1"):
        download_file(f"{served.url}/missing.zip", tmp_path / "out" / "missing.zip", md5="0" * 32)
    assert list((tmp_path / "out").iterdir()) == []


def test_md5sum_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "blob").write_bytes(data)
    assert md5sum(tmp_path / "blob", chunk_size=1000) == hashlib.md5(data).hexdigest()


def test_omniglot_download_fetches_only_missing_files(served, local_tables, tmp_path, omniglot_cache):
    root = tmp_path / "root"
    dataset = Omniglot(root, "test", download=True, cache_dir=omniglot_cache)
    assert len(dataset.classes) == 1692
    assert sorted(served.requests) == [
        "/images_background.zip",
        "/images_evaluation.zip",
        "/splits/vinyals/test.txt",
    ]
    for relative in ("images_background.zip", "images_evaluation.zip", "splits/vinyals/test.txt"):
        assert md5sum(root / relative) == local_tables[relative]
    served.requests.clear()
    Omniglot(root, "val", download=True, cache_dir=omniglot_cache)  # the zips are here: only the split list
    assert served.requests == ["/splits/vinyals/val.txt"]


def test_omniglot_local_copy_needs_no_download(served, local_tables, data_root, omniglot_cache):
    dataset = Omniglot(data_root / "omniglot", "train", download=True, cache_dir=omniglot_cache)
    assert len(dataset.classes) == 4112 and served.requests == []


def test_omniglot_download_with_wrong_checksum_leaves_no_partial_file(served, local_tables, tmp_path, monkeypatch):
    monkeypatch.setitem(Omniglot.MD5, "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718")
    root = tmp_path / "root"
    expected = r"images_background\.zip from http://127\.0\.0\.1:\d+/images_background\.zip has md5 [0-9a-f]{32}, "
    with pytest.raises(ChecksumError, match=expected + "expected 68d2efa1b9178cc56df9314c21c6e718"):
        Omniglot(root, "train", protocol="background", download=True, cache_dir=tmp_path / "cache")
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_official_tables_cover_every_downloadable_file():
    assert set(Omniglot.URLS) == set(Omniglot.MD5)
    assert Omniglot.MD5["images_background.zip"] == "68d2efa1b9178cc56df9314c21c6e718"
    assert Omniglot.MD5["images_evaluation.zip"] == "6b91aef0f799c5bb55b94e3f2daec811"
    assert all(url.startswith("https://") for url in Omniglot.URLS.values())


def test_official_split_md5s_match_the_shared_split_files(data_root):
    for split in ("train", "val", "test", "trainval"):
        relative = f"splits/vinyals/{split}.txt"
        assert md5sum(data_root / "omniglot" / relative) == Omniglot.MD5[relative]


def test_cache_path_depends_on_name_and_key(tmp_path):
    a = cache_path("omniglot", {"image_size": 28}, tmp_path)
    assert a == cache_path("omniglot", {"image_size": 28}, tmp_path) and a.parent == tmp_path
    assert a != cache_path("omniglot", {"image_size": 32}, tmp_path)
    assert a != cache_path("other", {"image_size": 28}, tmp_path)


def test_load_or_build_builds_once_and_writes_atomically(tmp_path):
    calls = []

    def build() -> dict:
        calls.append(1)
        return {"x": torch.arange(6, dtype=torch.uint8), "names": "a\nb"}

    first = load_or_build("thing", {"v": 1}, build, data_dir=tmp_path / "absent", cache_dir=tmp_path / "cache")
    second = load_or_build("thing", {"v": 1}, build, data_dir=tmp_path / "absent", cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and torch.equal(first["x"], second["x"]) and second["names"] == "a\nb"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_path("thing", {"v": 1}, tmp_path).name]
    load_or_build("thing", {"v": 2}, build, data_dir=tmp_path / "absent", cache_dir=tmp_path / "cache")
    assert len(calls) == 2


def test_download_module_doctests_run():
    failures, tried = doctest.testmod(download_module, optionflags=doctest.ELLIPSIS)
    assert tried >= 4 and failures == 0
