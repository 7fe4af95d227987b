"""The enqueue path: from a task's call to a stored job, then one dispatch.

Every send of the client comes here (``Task.delay``, ``Task.map``,
``Sender.delay``, ``Sender.map``, their async forms and ``Queue.send``):

1. the job is built: :func:`new_job` pickles and seals the call and maps the
   options onto the engine's ``NewJob``. A *plain* send (``delay``/``map`` of
   a task with no middleware, uniqueness or send-time limit check, outside
   test mode) skips that per call: it stores the task's template
   (:func:`plain_template`, made once per options object) with each call's
   payload (``Engine.enqueue_payloads``); a batch that differs only in its
   arguments (:func:`_uniform`) does the same;
2. the engine stores it (one transaction for a whole ``map``);
3. the dispatch: the supervisors of the database are woken
   (``Database.wake``), or, in test mode, each job runs at once in this
   process (``pool/eager.py``). Test mode always takes the general path
   (:func:`send_calls`), which holds both branches; a plain send
   (:func:`_store_copies`) only wakes.

Middlewares' ``pre_send`` runs before step 1 of each call, ``post_send``
after step 3.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._base.serialization import dumps_call, dumps_positional_calls, positional_args
from .._core import NewJob
from ..errors import SendError
from ..flow.limits import ensure_limits_pushed, unique_key_of
from .events import SendMessage, handler_name
from .job import Job
from .options import DEFAULT_CALL, CallOptions, TaskOptions, check_labels

if TYPE_CHECKING:
    from .queue import Queue
    from .task import Task

log = logging.getLogger("stoker.queue")

#: One call of the general path: the task, its options (the task's or a
#: sender's), the call's overrides, and the call's arguments.
Call = tuple["Task[Any, Any]", TaskOptions, CallOptions, tuple[Any, ...], dict[str, Any]]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def new_job(
    task: Task[Any, Any],
    call: CallOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: TaskOptions | None = None,
    labels: dict[str, Any] | None = None,
) -> NewJob:
    """The job that stores one call of ``task`` (its payload pickled and sealed)."""
    opts = options or task.options_
    arguments = dumps_call(task.name, task.func, args, kwargs)
    # The uniqueness key hashes the arguments, not the signed bytes.
    unique_key = call.unique_key or (unique_key_of(opts.name, arguments) if opts.unique else None)
    queue = task.queue
    payload = queue.sealer.seal(arguments)
    if opts.when_limited == "fail":
        ensure_limits_pushed(queue, opts.name, opts)
    return NewJob(
        opts.name,
        payload,
        queue=opts.queue,
        priority=opts.priority,
        max_retries=opts.max_retries,
        max_crashes=opts.max_crashes,
        backoff_base_ms=round(opts.retry_backoff * 1000),
        backoff_cap_ms=round(opts.retry_backoff_max * 1000),
        jitter=float(opts.retry_jitter),
        timeout_ms=_ms(opts.timeout),
        delay_ms=_ms(call.delay) or 0,
        eta_ms=_ms(call.eta),
        result_ttl_ms=_ms(opts.result_ttl),
        labels=json.dumps(labels, sort_keys=True) if labels else None,
        unique_key=unique_key,
        expires_after_ms=_ms(opts.expires),
        depends_on=[job.id for job in call.depends_on],
        fail_when_limited=opts.when_limited == "fail",
    )


def scheduled_job(
    task: Task[Any, Any],
    options: TaskOptions,
    call: CallOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> NewJob:
    """The job every fire of a schedule of ``task`` enqueues (see ``flow/schedule.py``)."""
    # A schedule's labels are also the labels of every job it fires; a fire
    # never fails for a limit (it waits).
    return new_job(task, call, args, kwargs, replace(options, when_limited="wait"), call.labels)


def plain_template(task: Task[Any, Any]) -> NewJob | None:
    """The job a plain send of ``task`` stores, but for its payload.

    None when such a send has work to do per call: middlewares see and may
    change each call, test mode runs each job, a uniqueness key comes from
    the arguments, a rate-limit check runs at send. The template is made once
    per options object (kept on the task): every plain send would build the
    same one.
    """
    queue = task.queue
    if queue.hooks.middlewares or queue.database.test_outcomes is not None:
        return None
    cached = task._plain
    if cached is None or cached[0] is not task.options_:
        options = task.options_
        template = None
        if not options.unique and options.when_limited != "fail":
            template = new_job(task, DEFAULT_CALL, (), {}, options, None)
        cached = task._plain = (options, template)
    return cached[1]


def send_plain(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
    """``task.delay(*args, **kwargs)``: one job, committed before this returns.

    A plain send stores the task's template with this call's payload, which
    is the job the general path (:func:`send_calls`) would build, without
    building it again for every call.
    """
    template = plain_template(task)
    if template is None:
        return send_calls(task.queue, [(task, task.options_, DEFAULT_CALL, args, kwargs)])[0]
    return _store_copies(task.queue, template, [dumps_call(task.name, task.func, args, kwargs)])[0]


def send_plain_many(task: Task[Any, Any], calls: Iterable[tuple[Any, ...]]) -> list[Job]:
    """``task.map(calls)``: one job per call, all committed in one transaction."""
    template = plain_template(task)
    if template is None:
        return send_calls(
            task.queue,
            [
                (task, task.options_, DEFAULT_CALL, positional_args(task.name, index, args), {})
                for index, args in enumerate(calls)
            ],
        )
    return _store_copies(task.queue, template, dumps_positional_calls(task.name, task.func, calls))


def send_call(
    task: Task[Any, Any],
    options: TaskOptions,
    call: CallOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Job:
    """One call with a sender's options (``Sender.delay``), through the general path."""
    return send_calls(task.queue, [(task, options, call, args, kwargs)])[0]


def send_calls(queue: Queue, calls: list[Call]) -> list[Job]:
    """The general path: each call built on its own (middlewares, labels,
    uniqueness, limit checks), all stored in one transaction."""
    if len(calls) > 1 and _uniform(queue, calls):
        task, options, call, _, _ = calls[0]
        template = new_job(task, call, (), {}, options, None)
        return _store_copies(
            queue, template, dumps_positional_calls(task.name, task.func, [c[3] for c in calls])
        )
    middlewares = queue.hooks.middlewares
    new_jobs = []
    for task, options, call, args, kwargs in calls:
        message = SendMessage(task.name, args, kwargs, dict(call.labels or {}))
        for middleware in middlewares:
            try:
                middleware.pre_send(message)
            except Exception as error:
                raise SendError(
                    task.name, f"middleware {handler_name(middleware)}.pre_send raised {error!r}"
                ) from error
        if message.labels:
            check_labels(message.labels)
        new_jobs.append(new_job(task, call, message.args, message.kwargs, options, message.labels))
    engine = queue.engine
    outcomes = queue.database.test_outcomes
    # Test mode hands out jobs of its private database; they keep reading it.
    private = engine if outcomes is not None else None
    jobs = [Job(queue, job_id, private) for job_id in engine.enqueue(new_jobs)]
    # The dispatch (written here, not called, to add no call to a send).
    if outcomes is None:
        queue.database.wake()
    else:
        # The one place the client runs the pool's code: test mode runs each
        # job now, through the worker's Runner (``Queue.test_mode``).
        from ..pool.eager import run_eagerly

        for job in jobs:
            outcomes.append(run_eagerly(queue, job))
    for job in jobs:
        for middleware in middlewares:
            try:
                middleware.post_send(job)
            except Exception:
                log.exception("middleware %s.post_send raised for job %s", handler_name(middleware), job.id)
    return jobs


def _uniform(queue: Queue, calls: list[Call]) -> bool:
    """Whether the calls differ only in their arguments, with nothing to do per call.

    Such a batch (``map``) is stored as copies of one job that differ only
    in their payload: no middleware, labels, uniqueness, dependencies or
    send-time limit check asks for per-call work.
    """
    task, options, call, _, _ = calls[0]
    if queue.hooks.middlewares or queue.database.test_outcomes is not None:
        return False
    if call.labels or call.unique_key or call.depends_on or options.unique:
        return False
    if options.when_limited == "fail":
        return False
    return all(c[0] is task and c[1] is options and c[2] is call and not c[4] for c in calls)


def _store_copies(queue: Queue, template: NewJob, payloads: list[bytes]) -> list[Job]:
    """One job per payload, each a copy of ``template`` but for it, in one transaction."""
    sealer = queue.sealer
    if sealer.signs:
        payloads = [sealer.seal(payload) for payload in payloads]
    ids = queue.engine.enqueue_payloads(template, payloads)
    # The dispatch of a plain send: it never runs in test mode (plain_template
    # and _uniform send test mode down the general path), so it wakes the
    # supervisors, before the handles are made.
    queue.database.wake()
    return [Job(queue, job_id) for job_id in ids]
