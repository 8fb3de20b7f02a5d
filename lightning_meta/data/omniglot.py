"""Omniglot (Lake et al., Science 2015) from its official files, with the Vinyals and background protocols.

Images are decoded once (PIL, grey levels, LANCZOS resize, as learn2learn and torchvision do) into a uint8 tensor
cached on disk (see :mod:`lightning_meta.data.download`), so later loads take milliseconds. Inputs follow the
convention of Snell et al.'s Prototypical Networks and learn2learn: ink is 1 and paper is 0 (the PNGs are the
opposite), as float tensors ``[1, S, S]`` in ``[0, 1]``.
"""

from __future__ import annotations

import functools
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta._checks import positive_int
from lightning_meta.data.download import decode_all, download_file, load_or_build, md5sum

#: The two official image sets: (alphabets, characters); every character has 20 drawings.
OMNIGLOT_SETS: dict[str, tuple[int, int]] = {"images_background": (30, 964), "images_evaluation": (20, 659)}
DRAWINGS_PER_CHARACTER = 20

_SPLITS = {"vinyals": ("train", "val", "test", "trainval"), "background": ("train", "test")}
_SPLIT_LINE = re.compile(r"^(?P<character>[^/]+/character\d+)/rot(?P<degrees>\d{3})$")


@dataclass(frozen=True)
class OmniglotImages:
    """The decoded drawings of one Omniglot image set (a zip or an extracted folder), grouped by character.

    Attributes:
        images: uint8 ``[N, S, S]``, ink 255 and paper 0.
        characters: ``"Alphabet/characterNN"`` of each character, sorted.
        character: long ``[N]``, the index in ``characters`` of each drawing (non-decreasing).
        files: the file name of each drawing (``"0709_01.png"``); a character's drawings are in file-name order.
    """

    images: Tensor
    characters: list[str]
    character: Tensor
    files: list[str]

    @property
    def n_alphabets(self) -> int:
        """Number of distinct alphabets."""
        return len({name.split("/")[0] for name in self.characters})

    def drawings_per_character(self) -> Tensor:
        """Number of drawings of each character, ``[len(characters)]``."""
        return torch.bincount(self.character, minlength=len(self.characters))


def load_omniglot_images(
    source: str | Path, *, image_size: int = 28, cache_dir: str | Path | None = None
) -> OmniglotImages:
    """Decode every ``<Alphabet>/characterNN/*.png`` of a zip or folder, once, through the on-disk cache.

    Works on any Omniglot image set in the official layout: the two big sets, the "minimal" sets
    (``images_background_small1.zip``) or an extracted copy of any of them. The cache is keyed by ``image_size``
    and by the identity of the source (the md5 of a zip; the name, size and modification time of each extracted
    file), so a changed source is decoded again.

    Args:
        source: a ``.zip`` file or a folder.
        image_size: side of the square images after the LANCZOS resize.
        cache_dir: where to keep the decoded tensor; by default beside ``source`` when its folder is writable, else
            ``$LIGHTNING_META_CACHE`` or ``~/.cache/lightning_meta`` (see :mod:`lightning_meta.data.download`).

    Returns:
        The drawings and their characters.
    """
    source = Path(source).expanduser()
    positive_int("load_omniglot_images", "image_size", image_size)
    if source.is_file():
        # The zip's md5 (tens of milliseconds) is its identity; listing 30,000 members in Python takes longer.
        identity: object = {"md5": md5sum(source)}

        def entries_and_blobs() -> tuple[list[tuple[str, ...]], Iterator[bytes]]:
            try:
                archive = zipfile.ZipFile(source)
            except zipfile.BadZipFile as error:
                raise ValueError(
                    f"Omniglot image set {source} ({source.stat().st_size:,} bytes) is not a readable zip file "
                    f"({error}): it is probably cut short (an interrupted download or copy). Delete it and download "
                    "it again (Omniglot(root, split, download=True), or `download: true` in the config)."
                ) from error
            with archive:
                members = sorted(
                    (tuple(info.filename.split("/")[-3:]), info.filename)
                    for info in archive.infolist()
                    if info.filename.endswith(".png") and info.filename.count("/") >= 2
                )

            def blobs() -> Iterator[bytes]:
                with zipfile.ZipFile(source) as archive:
                    for _, member in members:
                        yield archive.read(member)

            return [key for key, _ in members], blobs()

    elif source.is_dir():
        paths = sorted(source.glob("*/*/*.png"))
        stats = [p.stat() for p in paths]
        identity = [["/".join(p.parts[-3:]), s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats, strict=True)]

        def entries_and_blobs() -> tuple[list[tuple[str, ...]], Iterator[bytes]]:
            return [tuple(p.parts[-3:]) for p in paths], (p.read_bytes() for p in paths)

    else:
        raise FileNotFoundError(f"Omniglot image set {source} does not exist (expected a .zip file or a folder).")
    set_name = source.name.removesuffix(".zip")

    def build() -> dict:
        entries, blobs = entries_and_blobs()
        if not entries:
            raise ValueError(f"{source} holds no <Alphabet>/characterNN/*.png drawings; is it an Omniglot image set?")
        images = decode_all(
            blobs,
            functools.partial(_decode_one, size=image_size),
            (image_size, image_size),
            len(entries),
            f"Decoding Omniglot {set_name} ({image_size}px)",
        )
        names = [f"{alphabet}/{character}" for alphabet, character, _ in entries]
        characters = sorted(set(names))
        position = {name: i for i, name in enumerate(characters)}
        return {  # strings joined by newlines: one string loads much faster than a list of 30,000
            "images": images,
            "characters": "\n".join(characters),
            "character": torch.tensor([position[n] for n in names], dtype=torch.long),
            "files": "\n".join(file for _, _, file in entries),
        }

    content = load_or_build(
        f"omniglot-{set_name}-{image_size}px",
        {"image_size": image_size, "source": identity},
        build,
        data_dir=source.parent,
        cache_dir=cache_dir,
    )
    return OmniglotImages(
        content["images"], content["characters"].split("\n"), content["character"], content["files"].split("\n")
    )


def _decode_one(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L")
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


class Omniglot(Dataset):
    """Omniglot characters as a labelled dataset of ``(image, class)`` for few-shot episodes.

    Reads the official files under ``root``: ``images_background.zip`` and ``images_evaluation.zip`` (or their
    extracted folders ``images_background/<Alphabet>/characterNN/*.png``), and for the Vinyals protocol the split
    lists ``splits/vinyals/{train,val,test,trainval}.txt``. A local copy is verified by its content (30 alphabets
    and 964 characters in the background set, 20 and 659 in the evaluation set, 20 drawings each), so any faithful
    copy is accepted; a download is verified by its md5.

    Protocols:
        * ``"vinyals"`` (Vinyals et al., 2016; used by almost every paper): the classes listed in the split file,
          each a character at one rotation (``Alphabet/characterNN/rotDDD``): 4112/688/1692 classes in
          train/val/test (1028/172/423 characters). ``rotations=False`` keeps the ``rot000`` classes only.
        * ``"background"`` (Lake et al.): split ``"train"`` is the background set, ``"test"`` the evaluation set;
          with ``rotations=True`` each of the four rotations of a character is its own class.

    Inputs are float ``[1, S, S]`` in ``[0, 1]`` with ink 1 and paper 0. A class ``rotDDD`` holds its character's
    drawings rotated counter-clockwise by ``DDD`` degrees (as PIL's ``Image.rotate`` and ``torch.rot90`` turn
    them). The examples of a class are its character's 20 drawings in file-name order; ``labels[i]`` indexes
    ``classes``, which are in split-file order (Vinyals) or sorted by character, then rotation (background; named
    ``Alphabet/characterNN`` without ``/rotDDD`` when ``rotations=False``).

    Args:
        root: folder holding the files above.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (Vinyals); ``"train"`` or ``"test"``
            (background).
        protocol: ``"vinyals"`` or ``"background"``.
        image_size: side of the square inputs (28 is the standard).
        rotations: count each 90-degree rotation of a character as its own class.
        download: fetch missing files from :attr:`URLS` (verified against :attr:`MD5`) into ``root``.
        cache_dir: where to keep the decoded images; by default beside the zips when ``root`` is writable, else
            ``$LIGHTNING_META_CACHE`` or ``~/.cache/lightning_meta``.

    Raises:
        ValueError: an unknown protocol or split, a bad ``image_size``, or a local copy with the wrong number of
            alphabets, characters or drawings (the message says what was found).
        FileNotFoundError: a needed file is missing and ``download`` is false.
        ~lightning_meta.data.download.ChecksumError: a downloaded file has the wrong md5.
    """

    #: Where ``download=True`` fetches each file, by its path under ``root``.
    URLS: ClassVar[dict[str, str]] = {
        "images_background.zip": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
        "images_evaluation.zip": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
        **{
            f"splits/vinyals/{split}.txt": "https://raw.githubusercontent.com/jakesnell/prototypical-networks/"
            f"master/data/omniglot/splits/vinyals/{split}.txt"
            for split in _SPLITS["vinyals"]
        },
    }
    #: The md5 of each downloadable file, by its path under ``root``.
    MD5: ClassVar[dict[str, str]] = {
        "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
        "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
        "splits/vinyals/train.txt": "433d1fcc2b20dcee2983ceb524586f7f",
        "splits/vinyals/val.txt": "78c535fa427b12b6596908376a0b3f34",
        "splits/vinyals/test.txt": "43534e6d5f9e74acbb7de1b4874abad8",
        "splits/vinyals/trainval.txt": "888433268015439fd05fb6e9006ead50",
    }

    #: Rotate every example once at construction when that takes at most this many bytes (one uint8 image per
    #: example), instead of rotating in every :meth:`gather_inputs` call.
    MAX_ROTATED_BYTES: ClassVar[int] = 256 * 2**20

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        protocol: str = "vinyals",
        image_size: int = 28,
        rotations: bool = True,
        download: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        if protocol not in _SPLITS:
            raise ValueError(f"Omniglot: protocol must be one of {list(_SPLITS)}, got {protocol!r}.")
        if split not in _SPLITS[protocol]:
            raise ValueError(
                f"Omniglot: split must be one of {list(_SPLITS[protocol])} under protocol {protocol!r}, got {split!r}."
            )
        positive_int("Omniglot", "image_size", image_size)
        self.root = Path(root).expanduser()
        self.split, self.protocol, self.image_size, self.rotations = split, protocol, image_size, rotations

        if protocol == "vinyals":
            set_names = list(OMNIGLOT_SETS)
        else:
            set_names = ["images_background" if split == "train" else "images_evaluation"]
        split_file = f"splits/vinyals/{split}.txt" if protocol == "vinyals" else None
        found = {name: self._find(name) for name in set_names}
        missing = [f"{name}.zip" for name, source in found.items() if source is None]
        if split_file is not None and not (self.root / split_file).is_file():
            missing.append(split_file)
        if missing and not download:
            raise FileNotFoundError(
                f"Omniglot ({protocol} protocol, split {split!r}) is missing {', '.join(missing)} under {self.root} "
                f"({self.root.resolve()}). "
                "Expected layout under root: images_background.zip and images_evaluation.zip (or "
                "their extracted folders images_background/<Alphabet>/characterNN/*.png), and for the Vinyals "
                "protocol splits/vinyals/<split>.txt. Pass download=True to fetch the official files (in a config: "
                "`download: true` in the dataset's init_args, or set root to your copy)."
            )
        for relative in missing:
            download_file(self.URLS[relative], self.root / relative, md5=self.MD5[relative])
        sources = {name: source or self.root / f"{name}.zip" for name, source in found.items()}

        sets = [load_omniglot_images(source, image_size=image_size, cache_dir=cache_dir) for source in sources.values()]
        for (name, source), decoded in zip(sources.items(), sets, strict=True):
            _check_counts(name, source, decoded)
        images = torch.cat([s.images for s in sets])
        characters = [name for s in sets for name in s.characters]
        character = torch.cat([s.character + sum(len(t.characters) for t in sets[:i]) for i, s in enumerate(sets)])

        if split_file is not None:
            classes = self._read_split(self.root / split_file, characters)
        else:
            turns = (0, 1, 2, 3) if rotations else (0,)
            classes = [(c, k) for c in range(len(characters)) for k in turns]
        if split_file is not None and not rotations:
            classes = [(c, k) for c, k in classes if k == 0]

        # Drawings of character c are images[first[c] : first[c] + count[c]] (grouped and ordered by the loader).
        count = torch.bincount(character, minlength=len(characters))
        first = count.cumsum(0) - count
        class_character = torch.tensor([c for c, _ in classes], dtype=torch.long)
        per_class = count[class_character]
        self.labels = torch.repeat_interleave(torch.arange(len(classes)), per_class)
        starts = torch.repeat_interleave(first[class_character], per_class)
        within = torch.arange(len(self.labels)) - torch.repeat_interleave(per_class.cumsum(0) - per_class, per_class)
        self._image = starts + within
        self._turns = torch.repeat_interleave(torch.tensor([k for _, k in classes], dtype=torch.long), per_class)
        self.classes = [
            f"{characters[c]}/rot{90 * k:03d}" if rotations or split_file else characters[c] for c, k in classes
        ]
        self._images = images
        self._rotated = bool(self._turns.any())
        if self._rotated and len(self.labels) * image_size**2 <= self.MAX_ROTATED_BYTES:
            # Rotate once: one uint8 row per example (64 MB for the Vinyals train split at 28px) makes every
            # gather a single index_select, several times faster than rotating inside each episode.
            self._images = self._rotate(self._images.index_select(0, self._image), self._turns)
            self._image = torch.arange(len(self.labels))
            self._rotated = False

    def _find(self, name: str) -> Path | None:
        """The zip of an image set, else its extracted folder, else ``None``."""
        archive, folder = self.root / f"{name}.zip", self.root / name
        return archive if archive.is_file() else folder if folder.is_dir() else None

    @staticmethod
    def _read_split(path: Path, characters: list[str]) -> list[tuple[int, int]]:
        position = {name: i for i, name in enumerate(characters)}
        classes = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            match = _SPLIT_LINE.match(line.strip())
            degrees = int(match["degrees"]) if match else -1
            if match is None or degrees % 90 or degrees >= 360:
                raise ValueError(f"{path}, line {number}: expected 'Alphabet/characterNN/rotDDD', got {line!r}.")
            if match["character"] not in position:
                raise ValueError(f"{path}, line {number}: character {match['character']!r} is not in the images.")
            classes.append((position[match["character"]], degrees // 90))
        if not classes:
            raise ValueError(f"The split file {path} lists no classes.")
        return classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Omniglot index {index} out of range for {len(self)} examples.")
        index %= len(self)
        return self.gather_inputs(torch.tensor([index]))[0], int(self.labels[index])

    def gather_inputs(self, index: Tensor) -> Tensor:
        """Stacked inputs ``[len(index), 1, S, S]`` (float, ink 1) of the examples ``index``, rotated as their class.

        The drawings are gathered in one indexing operation; rotated classes are turned with ``torch.rot90`` once at
        construction when one uint8 image per example fits in :attr:`MAX_ROTATED_BYTES`, otherwise here, one
        ``torch.rot90`` call per quarter turn present in ``index``.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        images = self._images.index_select(0, self._image[index])  # a fresh [n, S, S] uint8 copy
        if self._rotated:
            images = self._rotate(images, self._turns[index])
        return images.unsqueeze(1).float().div_(255)

    @staticmethod
    def _rotate(images: Tensor, turns: Tensor) -> Tensor:
        """Turn ``images[i]`` (a fresh ``[n, S, S]`` tensor, changed in place) by ``turns[i]`` quarter turns."""
        for k in (1, 2, 3):
            rows = torch.nonzero(turns == k).squeeze(1)
            if rows.numel():
                images[rows] = torch.rot90(images[rows], k, dims=(1, 2))
        return images

    def __repr__(self) -> str:
        return (
            f"Omniglot(split={self.split!r}, protocol={self.protocol!r}, classes={len(self.classes)}, "
            f"examples={len(self)}, image_size={self.image_size}, rotations={self.rotations})"
        )


def _check_counts(name: str, source: Path, images: OmniglotImages) -> None:
    alphabets, characters = OMNIGLOT_SETS[name]
    drawings = images.drawings_per_character()
    if (
        images.n_alphabets == alphabets
        and len(images.characters) == characters
        and bool((drawings == DRAWINGS_PER_CHARACTER).all())
    ):
        return
    odd = [f"{images.characters[i]} ({int(drawings[i])})" for i in torch.nonzero(drawings != 20).flatten()[:3]]
    raise ValueError(
        f"{source} is not the full Omniglot {name} set: it holds {images.n_alphabets} alphabets and "
        f"{len(images.characters)} characters, expected {alphabets} alphabets and {characters} characters with "
        f"{DRAWINGS_PER_CHARACTER} drawings each"
        + (f"; characters with another number of drawings: {', '.join(odd)}" if odd else "")
        + "."
    )
