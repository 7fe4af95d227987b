"""The application a command names as ``MODULE:QUEUE``: importing it, and saying why it cannot be."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from ..client.queue import Queue
from ..errors import StokerError
from .exit_codes import CommandError


def load_queue(reference: str) -> tuple[Queue, str]:
    """Import ``module:attribute`` and return the Queue it names, with its module."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"expected MODULE:QUEUE (like app.tasks:queue), got {reference!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise CommandError(f"cannot import {module_name!r}: {error}") from None
        raise CommandError(f"cannot import {module_name!r}: {raised(error)}") from error
    except StokerError:
        raise  # The queue's own error, named already (a file that is not a stoker database).
    except (Exception, SystemExit) as error:
        # The application's module raised while it was imported: its error,
        # where it was raised, in one line (--traceback shows the rest).
        raise CommandError(f"cannot import {module_name!r}: {raised(error)}") from error
    try:
        queue = getattr(module, attribute)
    except AttributeError:
        raise CommandError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(queue, Queue):
        raise CommandError(f"{reference} is a {type(queue).__qualname__}, not a stoker.Queue")
    return queue, module_name


def raised(error: BaseException) -> str:
    """``ZeroDivisionError: division by zero (at app/tasks.py, line 3)``: an error and where it was raised."""
    text = f"{type(error).__qualname__}: {error}" if str(error) else type(error).__qualname__
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<frozen")]
    if frames and not isinstance(error, SyntaxError):  # A SyntaxError's message says where.
        where = frames[-1]
        text += f" (at {_display_path(where.filename)}, line {where.lineno})"
    return text


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative
