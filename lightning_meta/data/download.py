"""Files on disk for the dataset adapters: md5-verified downloads and the cache of decoded images.

A download goes to a temporary name beside its destination, is checked against its md5 and only then renamed, so a
failed, interrupted or corrupted download never leaves a file that looks complete.

Decoding thousands of image files takes seconds to minutes; the adapters do it once and keep the result as a
``.pt`` file of uint8 tensors (:func:`load_or_build`). The file name carries a digest of a *key* that names
everything the content depends on (the image size and the identity of the source files), so a cache built from
other files or at another size is never used. It is written atomically (temporary file, then ``os.replace``), so
concurrent processes (DDP ranks) and interrupted runs cannot leave a half-written cache.

Where the cache lives:

* an explicit ``cache_dir`` argument, when given;
* otherwise beside the data, when that folder is writable (a folder whose mode has no write bit counts as
  read-only, even for root);
* otherwise ``$LIGHTNING_META_CACHE``, else ``~/.cache/lightning_meta``.

A valid cache already present beside the data is used whatever ``cache_dir`` says (it may be a read-only copy
prepared by an administrator).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from torch import Tensor

#: Environment variable naming the cache folder used when the data folder is not writable.
CACHE_ENV = "LIGHTNING_META_CACHE"

_CACHE_FORMAT = 1  # bump when the layout of cache files changes


class ChecksumError(ValueError):
    """A downloaded file does not have the md5 it should have; the file was deleted."""


def md5sum(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """The md5 hex digest of a file, read in chunks.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
        >>> _ = path.write_bytes(b"hello")
        >>> md5sum(path)
        '5d41402abc4b2a76b9719d911017c592'
    """
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, destination: str | Path, *, md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination``, verified by its md5, leaving no partial file on any failure.

    The bytes go to a hidden temporary file in the destination's folder; only when the whole file has arrived and
    its md5 matches is it renamed to ``destination`` (an atomic replace).

    Args:
        url: where to fetch the file.
        destination: the final path; its folder is created if needed.
        md5: the expected md5 hex digest.
        timeout: seconds to wait for the server before giving up.

    Returns:
        ``destination`` as a :class:`~pathlib.Path`.

    Raises:
        ChecksumError: the downloaded bytes have another md5 (the message names the file, the expected and the
            actual digest); nothing is left on disk.
        OSError: the server could not be reached or answered with an error.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            size = int(response.headers.get("Content-Length") or 0) or None
            columns = (
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"Downloading {destination.name}", total=size)
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
        actual = digest.hexdigest()
        if actual != md5.lower():
            raise ChecksumError(
                f"The download of {destination.name} from {url} has md5 {actual}, expected {md5.lower()}; the file "
                "was deleted. The server may have sent an error page or a different version of the file."
            )
        os.replace(temporary, destination)
    except urllib.error.URLError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise OSError(f"Could not download {destination.name} from {url}: {getattr(err, 'reason', err)}.") from err
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return destination


def decode_all(
    items: Iterable[Any], decode: Callable[[Any], np.ndarray], shape: tuple[int, ...], total: int, description: str
) -> Tensor:
    """Decode ``total`` items into one uint8 tensor ``[total, *shape]``, with a progress bar.

    PIL releases the GIL while it decodes and resizes, so a few threads share the work.

    Args:
        items: what ``decode`` takes (file bytes, paths, arrays), in order.
        decode: turns one item into a uint8 array of ``shape``.
        shape: the shape of one decoded item.
        total: the number of items.
        description: the progress bar's label.
    """
    out = np.empty((total, *shape), dtype=np.uint8)
    workers = max(1, min(4, os.cpu_count() or 1))
    with Progress(transient=True) as progress, ThreadPoolExecutor(workers) as pool:
        task = progress.add_task(description, total=total)
        count = 0
        for i, array in enumerate(pool.map(decode, items, chunksize=64)):
            out[i] = array
            count = i + 1
            if count % 512 == 0:
                progress.update(task, completed=count)
        progress.update(task, completed=count)
    if count != total:
        raise ValueError(f"{description}: expected {total} items, got {count}.")
    return torch.from_numpy(out)


def _writable(folder: Path) -> bool:
    """Whether files may be created in ``folder``; a folder without any write bit in its mode counts as read-only."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK)


def default_cache_dir() -> Path:
    """The cache folder used when the data folder is not writable: ``$LIGHTNING_META_CACHE`` or ``~/.cache/...``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lightning_meta"


def cache_path(name: str, key: Mapping[str, Any], folder: str | Path) -> Path:
    """The cache file for ``name`` and ``key`` in ``folder`` (the key's digest is part of the file name).

    Example:
        >>> path = cache_path("omniglot-images_background-28px", {"image_size": 28}, "/tmp")
        >>> path.parent.as_posix(), path.name.startswith("omniglot-images_background-28px-"), path.suffix
        ('/tmp', True, '.pt')
        >>> path == cache_path("omniglot-images_background-28px", {"image_size": 32}, "/tmp")
        False
    """
    return Path(folder) / f"{name}-{_key_digest(name, key)[:16]}.pt"


def _key_digest(name: str, key: Mapping[str, Any]) -> str:
    text = json.dumps({"format": _CACHE_FORMAT, "name": name, **key}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


def load_or_build(
    name: str,
    key: Mapping[str, Any],
    build: Callable[[], dict[str, Any]],
    *,
    data_dir: str | Path,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Load a cached dict of tensors (and lists of strings), or build it once and cache it.

    Args:
        name: a readable prefix of the file name (``"omniglot-images_background-28px"``).
        key: everything the content depends on, JSON-serialisable (image size, source file identities).
        build: makes the dict when no valid cache exists (it should show its own progress).
        data_dir: the folder of the data, where the cache goes when it is writable.
        cache_dir: where the cache goes instead (see the module docstring for the order).

    Returns:
        The dict; tensors loaded from a cache file are memory-mapped (shared between processes, loaded lazily).
    """
    data_dir = Path(data_dir)
    fallback = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = _key_digest(name, key)
    for folder in dict.fromkeys([data_dir, fallback]):
        path = cache_path(name, key, folder)
        if path.is_file():
            cached = _load(path, digest)
            if cached is not None:
                return cached
    content = build()
    targets = [fallback] if cache_dir is not None else [data_dir, fallback]
    for folder in targets:
        if folder is data_dir and not _writable(folder):
            continue
        try:
            _save({**content, "cache_key": digest}, cache_path(name, key, folder))
            break
        except OSError:
            continue
    else:
        rank_zero_warn(
            f"Could not write the {name} cache in any of {[str(t) for t in targets]}; it is rebuilt next time."
        )
    return content


def _load(path: Path, digest: str) -> dict[str, Any] | None:
    try:
        cached = torch.load(path, weights_only=True, mmap=True)
    except Exception as err:  # a truncated or foreign file: rebuild it
        rank_zero_warn(f"Ignoring the unreadable cache file {path} ({err}); it is rebuilt.")
        return None
    if not isinstance(cached, dict) or cached.pop("cache_key", None) != digest:
        return None
    return cached


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save(content: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(content, file)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a cache is as readable as any file
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
