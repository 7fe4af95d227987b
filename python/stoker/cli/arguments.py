"""The types of the command's numeric options: the ranges of the Python API, refused in one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .._base.bounds import INT64_MAX, check_int, check_seconds
from ..errors import InvalidOptionError


def _argument_error(error: InvalidOptionError) -> argparse.ArgumentTypeError:
    """The range an option's check names (``must be ...``), for argparse to print after the option."""
    text = str(error)
    return argparse.ArgumentTypeError(text[text.index("must be") :] if "must be" in text else text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def positive_megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of MiB > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of MiB > 0, got {text!r}")
    return value


def int_argument(low: int, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: an int within ``[low, high]`` (the ranges of ``_base/bounds.py``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
        try:
            return check_int("value", value, low=low, high=high)
        except InvalidOptionError as error:
            raise _argument_error(error) from None

    return parse


def seconds_argument(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds the engine can hold (no NaN, no infinity)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        try:
            return check_seconds("value", value, allow_zero=allow_zero)
        except InvalidOptionError as error:
            raise _argument_error(error) from None

    return parse


non_negative_int = int_argument(0)
non_negative_seconds = seconds_argument(allow_zero=True)
positive_seconds = seconds_argument(allow_zero=False)
