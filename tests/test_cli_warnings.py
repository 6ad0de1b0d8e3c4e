"""The command line prints tenfold's own warnings as one readable line."""

from __future__ import annotations

import warnings

import pytest

from tenfold.cli import format_warning, main
from tenfold.distributed import OuterStepWarning


def test_tenfold_warnings_are_one_line_without_the_librarys_source() -> None:
    text = format_warning(OuterStepWarning("use SGD(lr=0.5)"), OuterStepWarning, "/x/loop.py", 83)
    assert text == "tenfold: warning: use SGD(lr=0.5)\n"


def test_other_warnings_keep_pythons_format() -> None:
    text = format_warning(UserWarning("odd"), UserWarning, "/x/mod.py", 7, "code()")
    assert "/x/mod.py:7: UserWarning: odd" in text


def test_main_restores_the_formatter(capsys: pytest.CaptureFixture[str]) -> None:
    before = warnings.formatwarning
    with pytest.raises(SystemExit):
        main(["--version"])
    assert warnings.formatwarning is before
    capsys.readouterr()
