"""Errors keep their detail: whatever exception a task raises, the caller gets its
type name, message and chained traceback, and the original class when it can cross.

Hypothesis describes exception classes (custom constructors, keyword-only
arguments, unpicklable attributes, cause and context chains, exception groups,
10 MB messages); ``apps.reliability.build_exception`` makes them at run time.
Most go through ``stoker._base.remote_errors.capture``/``rebuild``; a bounded number
go through real worker processes.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stoker
from apps import reliability as rel
from apps.reliability import BASES, BIG_MESSAGE, build_exception, message_of, raise_described
from conftest import HANG_GUARD
from reliability.harness import STRESS
from stoker._base.remote_errors import capture, qualified_name, rebuild

BIG = 10 * 1024 * 1024
messages = st.one_of(st.text(max_size=40), st.just(BIG_MESSAGE))
leaf = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["Custom", "QuotaLike", "Odd_Name"]),
        "base": st.sampled_from(sorted(BASES)),
        "ctor": st.sampled_from(["message", "fields", "kwonly", "none"]),
        "attr": st.sampled_from(["none", "int", "lock"]),
        "message": messages,
    }
)


def _with_chain(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    chained = st.tuples(leaf, st.sampled_from(["cause", "context"]), inner).map(
        lambda t: {**t[0], t[1]: t[2]}
    )
    grouped = st.tuples(leaf, st.lists(inner, min_size=1, max_size=3)).map(lambda t: {**t[0], "group": t[1]})
    return st.one_of(chained, grouped) if sys.version_info >= (3, 11) else chained


specs = st.recursive(leaf, _with_chain, max_leaves=4)


def _chain(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec and what it is chained to, outermost first."""
    link = spec.get("cause") or spec.get("context")
    return [spec, *(_chain(link) if link else [])]


def _all_specs(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield spec
    for key in ("cause", "context"):
        if spec.get(key):
            yield from _all_specs(spec[key])
    for member in spec.get("group") or ():
        yield from _all_specs(member)


def _can_cross(spec: dict[str, Any]) -> bool:
    return all(s["attr"] != "lock" for s in _all_specs(spec) if not s.get("group"))


def _raised(spec: dict[str, Any]) -> BaseException:
    try:
        raise_described(spec)
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


def check_caller_sees(
    spec: dict[str, Any], exc: BaseException, traceback_text: str, *, type_name: str, message: str
) -> None:
    """What the caller must get for ``spec``, whichever way the exception travelled."""
    expected_type = f"apps.reliability.{spec['name']}" if not spec.get("group") else "builtins.ExceptionGroup"
    assert type_name == expected_type
    expected_message = str(build_exception(spec))
    if isinstance(exc, stoker.RemoteTaskError):
        assert not _can_cross(spec), "a class that can cross came back as a stand-in"
        assert (exc.type_name, exc.remote_message) == (expected_type, expected_message)
        assert exc.remote_traceback == traceback_text
    else:
        assert _can_cross(spec)
        assert qualified_name(type(exc)) == expected_type
        assert str(exc) == expected_message
        if spec.get("attr") == "int" and not spec.get("group"):
            assert exc.code == 7  # type: ignore[attr-defined]
        if spec.get("ctor") in ("fields", "kwonly") and not spec.get("group"):
            assert (exc.user, exc.limit) == (message_of(spec), 3)  # type: ignore[attr-defined]
        # The chain came back with the classes it had.
        chain = _chain(spec)
        link: BaseException | None = exc
        for outer, inner in itertools.pairwise(chain):
            assert link is not None
            link = link.__cause__ if "cause" in outer else link.__context__
            assert link is not None
            assert type(link).__name__ == ("ExceptionGroup" if inner.get("group") else inner["name"])
    # The traceback text holds the whole chain, and sits at the root of the cause chain.
    for described in _chain(spec):
        name = described["name"] if not described.get("group") else "ExceptionGroup"
        assert name in traceback_text
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    assert isinstance(root, stoker.RemoteTraceback) and root.tb == traceback_text
    assert message == expected_message


@settings(
    max_examples=1000 if STRESS else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=specs)
def test_capture_and_rebuild_keep_the_detail(spec: dict[str, Any]) -> None:
    original = _raised(spec)
    captured = capture(original)
    rebuilt = rebuild(
        exc_type=captured.exc_type,
        message=captured.message,
        traceback_text=captured.traceback,
        exc_pickle=captured.exc_pickle,
    )
    assert (captured.exc_pickle is not None) == _can_cross(spec)
    check_caller_sees(
        spec, rebuilt, captured.traceback, type_name=captured.exc_type, message=captured.message
    )


@pytest.fixture(scope="module")
def error_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stoker.Queue]:
    queue = stoker.Queue(tmp_path_factory.mktemp("errors") / "jobs.db")
    queue.include(rel.queue)
    with queue.start_worker(processes=2, drain_timeout=0.0) as handle:
        assert handle.wait_started(HANG_GUARD), handle.error
        yield queue
        assert handle.error is None


@settings(max_examples=100 if STRESS else 8, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs)
def test_errors_from_real_workers_keep_the_detail(error_pool: stoker.Queue, spec: dict[str, Any]) -> None:
    job = error_pool.get_task("rel.raise_described").delay(spec)
    with pytest.raises(BaseException) as info:
        job.result(timeout=HANG_GUARD)
    (error,) = job.errors
    check_caller_sees(spec, info.value, error.traceback, type_name=error.type_name, message=error.message)


def test_a_10_mb_message_crosses_whole(error_pool: stoker.Queue, tmp_path: Path) -> None:
    spec = {"name": "Custom", "base": "ValueError", "ctor": "kwonly", "attr": "int", "message": BIG_MESSAGE}
    job = error_pool.get_task("rel.raise_described").delay({**spec, "cause": {**spec, "attr": "none"}})
    with pytest.raises(ValueError) as info:
        job.result(timeout=HANG_GUARD)
    assert str(info.value) == f"{'m' * BIG} over 3"
    assert type(info.value.__cause__).__name__ == "Custom"
