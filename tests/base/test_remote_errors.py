"""Exceptions captured in a worker and rebuilt in the caller (no processes needed)."""

from __future__ import annotations

import pickle
import sys

import pytest

from apps.tasks import QuotaError, Unpicklable
from stoker import RemoteTaskError, RemoteTraceback
from stoker._base.remote_errors import capture, rebuild


def _round_trip(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as raised:
        captured = capture(raised)
    return rebuild(
        exc_type=captured.exc_type,
        message=captured.message,
        traceback_text=captured.traceback,
        exc_pickle=captured.exc_pickle,
        job_id=1,
        attempt=1,
    )


def test_custom_exception_with_fields_comes_back_as_itself() -> None:
    error = _round_trip(QuotaError("ada", limit=3))
    assert type(error) is QuotaError
    assert (error.user, error.limit) == ("ada", 3)  # type: ignore[attr-defined]
    assert str(error) == "ada is over the quota of 3"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "QuotaError" in error.__cause__.tb


def test_default_pickle_cannot_do_it() -> None:
    # The reason dumps_exception exists: the default reduction calls __init__(message).
    data = pickle.dumps(QuotaError("ada", limit=3))
    try:
        pickle.loads(data)
    except TypeError:
        pass
    else:
        raise AssertionError("QuotaError unpickled with the default reduction")


def test_unpicklable_exception_becomes_a_stand_in() -> None:
    error = _round_trip(Unpicklable("it holds a lock"))
    assert isinstance(error, RemoteTaskError)
    assert error.type_name == "apps.tasks.Unpicklable"
    assert error.remote_message == "it holds a lock"
    assert "Unpicklable" in error.remote_traceback
    assert isinstance(error.__cause__, RemoteTraceback)


def test_cause_chain_is_kept_with_the_remote_traceback_at_its_root() -> None:
    try:
        try:
            {}["key"]
        except KeyError as inner:
            raise RuntimeError("lookup failed") from inner
    except RuntimeError as raised:
        captured = capture(raised)
    error = rebuild(
        exc_type=captured.exc_type,
        message=captured.message,
        traceback_text=captured.traceback,
        exc_pickle=captured.exc_pickle,
    )
    assert type(error) is RuntimeError
    assert type(error.__cause__) is KeyError
    remote = error.__cause__.__cause__
    assert isinstance(remote, RemoteTraceback)
    assert "KeyError" in remote.tb and "RuntimeError: lookup failed" in remote.tb


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are new in 3.11")
def test_exception_group_round_trips() -> None:
    # ExceptionGroup is a builtin from 3.11 on.
    group = ExceptionGroup("several", [ValueError("a"), QuotaError("b", limit=1)])  # noqa: F821
    error = _round_trip(group)
    assert type(error) is ExceptionGroup  # noqa: F821
    assert [type(e) for e in error.exceptions] == [ValueError, QuotaError]


def test_an_exception_whose_str_fails_is_still_captured() -> None:
    class BadStr(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    captured = capture(BadStr())
    assert "str() of the exception failed" in captured.message
    assert captured.exc_type.endswith("BadStr")
