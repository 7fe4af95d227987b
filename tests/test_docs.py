"""What README.md and docs/*.md name exists: attributes, options, fields, exported names.

The docs' code (fenced blocks and inline code) is read as text and every
``variable.attribute`` whose variable stands for a known class is looked up
on that class, along with the lists of attributes the prose gives (the
items of ``job.errors``, the fields of ``job.outcome()``, the task options)
and every ``stoker.NAME`` and ``SomethingError``. A name the docs promise and
the code does not have fails here.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import stoker
import stoker.executor
import stoker.testing
from stoker.client.context import JobContext
from stoker.client.events import SendMessage, State
from stoker.executor import JobFuture

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: What the docs' variables stand for.
CLASSES: dict[str, tuple[type[Any], ...]] = {
    "job": (stoker.Job,),
    "queue": (stoker.Queue,),
    "ctx": (JobContext,),
    "outcome": (stoker.Outcome,),
    "error": (stoker.AttemptError,),
    "letter": (stoker.DeadLetter,),
    "nightly": (stoker.Schedule,),
    "schedule": (stoker.Schedule,),
    "future": (JobFuture,),
    "state": (State,),
    "message": (SendMessage,),
    # The README's pool is a SupervisorThread, docs/usage.md's an Executor.
    "pool": (stoker.SupervisorThread, stoker.Executor),
    # The example tasks.
    "task": (stoker.Task,),
    "simulate": (stoker.Task,),
    "fetch": (stoker.Task,),
    "lookup": (stoker.Task,),
}

#: ``job.py`` and the like: file names, not attributes.
FILE_SUFFIXES = {"py", "pyi", "rs", "md", "db", "toml", "json", "txt", "png", "log"}


def names_of(cls: type[Any]) -> set[str]:
    """What an instance of ``cls`` has: attributes, fields, annotated names, what its methods set on self."""
    names = set(dir(cls))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    for klass in cls.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
        if klass.__module__.startswith("stoker"):
            names |= set(re.findall(r"\bself\.(\w+)\s*(?::[^=\n]+)?=[^=]", inspect.getsource(klass)))
    return names


def code_of(path: Path) -> list[str]:
    """The fenced code blocks and the inline code of a Markdown file."""
    text = path.read_text()
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def _references() -> list[tuple[str, str, str]]:
    """``(file, variable, attribute)`` for every ``variable.attribute`` of a known variable."""
    pattern = re.compile(r"(?<![\w.])(" + "|".join(CLASSES) + r")\.([A-Za-z_]\w*)")
    found = []
    for path in DOCS:
        for code in code_of(path):
            for variable, attribute in pattern.findall(code):
                if attribute in FILE_SUFFIXES or attribute.startswith("_"):
                    continue
                found.append((path.name, variable, attribute))
    return sorted(set(found))


REFERENCES = _references()


def test_the_docs_name_attributes_of_the_classes() -> None:
    # The docs do use these variables: a parser that found nothing would pass anything.
    variables = {variable for _, variable, _ in REFERENCES}
    assert {"job", "queue", "ctx", "outcome", "future"} <= variables, variables


@pytest.mark.parametrize(("doc", "variable", "attribute"), REFERENCES)
def test_an_attribute_the_docs_name_exists(doc: str, variable: str, attribute: str) -> None:
    classes = CLASSES[variable]
    assert any(attribute in names_of(cls) for cls in classes), (
        f"{doc} uses {variable}.{attribute}, which {' or '.join(c.__name__ for c in classes)} does not have"
    )


def test_the_attributes_of_a_job_s_errors_the_readme_lists_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"job\.errors\s+#[^:\n]*:\s*([\w, ]+)$", readme, flags=re.M)
    assert listed is not None, "README.md no longer lists the attributes of job.errors"
    names = [name.strip() for name in listed.group(1).split(",")]
    assert len(names) >= 4, names
    missing = [name for name in names if name not in names_of(stoker.AttemptError)]
    assert missing == [], f"README.md says job.errors items have {missing}; AttemptError has not"


def test_the_fields_of_an_outcome_the_guide_lists_exist() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text()
    sentence = re.search(r"`job\.outcome\(\)` returns[^:]*:(.*?)\.\n", guide, flags=re.S)
    assert sentence is not None, "docs/guide.md no longer lists the fields of job.outcome()"
    names = re.findall(r"`(\w+)`", sentence.group(1))
    assert len(names) >= 5, names
    missing = [name for name in names if name not in names_of(stoker.Outcome)]
    assert missing == [], f"docs/guide.md says an Outcome has {missing}"


def test_the_task_options_the_readme_lists_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    paragraph = re.search(r"^Task options: (.*?)\n\n", readme, flags=re.S | re.M)
    assert paragraph is not None, "README.md no longer lists the task options"
    # Options are lower-case; a class the paragraph names (an error) is not one.
    names = [name for name in re.findall(r"`(\w+)`", paragraph.group(1)) if not name[0].isupper()]
    assert len(names) >= 10, names
    fields = {f.name for f in dataclasses.fields(stoker.TaskOptions)}
    assert [name for name in names if name not in fields] == []


def _exported_references() -> list[tuple[str, str]]:
    """``(file, dotted name)`` for every ``stoker.NAME...`` and every ``SomethingError`` of the docs.

    Errors that are built-ins, or classes the docs' examples define
    (``class QuotaError``), are not stoker's.
    """
    found = []
    for path in DOCS:
        code = code_of(path)
        defined = {name for block in code for name in re.findall(r"^\s*class (\w+)", block, flags=re.M)}
        for text in code:
            for dotted in re.findall(r"(?<![\w.])stoker(?:\.[A-Za-z_]\w*)+", text):
                if dotted.split(".")[-1] not in FILE_SUFFIXES:
                    found.append((path.name, dotted))
            for error in re.findall(r"(?<![\w.])([A-Z]\w*Error)\b", text):
                if not hasattr(builtins, error) and error not in defined:
                    found.append((path.name, f"stoker.{error}"))
    return sorted(set(found))


EXPORTED = _exported_references()


def test_the_docs_name_exported_names() -> None:
    assert {"stoker.Queue", "stoker.JobNotFoundError", "stoker.gather"} <= {d for _, d in EXPORTED}


@pytest.mark.parametrize(("doc", "dotted"), EXPORTED)
def test_a_name_of_stoker_the_docs_use_exists(doc: str, dotted: str) -> None:
    parts = dotted.split(".")
    value: Any = stoker
    for depth, part in enumerate(parts[1:], start=2):
        if hasattr(value, part):
            value = getattr(value, part)
            continue
        try:  # A module not imported yet (stoker.testing, stoker._core).
            value = importlib.import_module(".".join(parts[:depth]))
        except ImportError:
            pytest.fail(f"{doc} names {dotted}, which does not exist")
