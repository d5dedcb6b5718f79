"""Every public class and function has a numpydoc docstring with doctest Examples.

The public API is the ``__all__`` of :mod:`numbadam`, :mod:`numbadam.schedules`,
:mod:`numbadam.keras3` and :mod:`numbadam.distributed` (the names ``docs/api.rst``
lists), and of the distributed demo, :mod:`numbadam.cli.demo.embedding`. For each
class or function there:

- the docstring has an ``Examples`` section with at least one ``>>>`` line
  (``--doctest-modules`` runs them);
- a function documents every parameter of its signature in ``Parameters``, and
  has a ``Returns`` section unless it is annotated ``-> None`` or carries no
  return annotation;
- a class documents every parameter of its constructor in ``Parameters`` (or,
  for a dataclass, ``Attributes``);
- every public method and property defined on a class has a non-empty
  docstring (inherited from a base class counts, as it does for autodoc).

These are static checks on the objects: no kernel is compiled.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

import numbadam
from numbadam import distributed, keras3, schedules
from numbadam.cli.demo import embedding

MODULES = (numbadam, schedules, distributed, keras3, embedding)

_HEADER = re.compile(r"^(?P<title>[A-Z][A-Za-z ]*)\n-{3,}[ \t]*$", re.MULTILINE)
_ENTRY = re.compile(r"^(?P<names>[*\w][\w*, ]*?)\s*(?::.*)?$")


def _public_objects():
    out = []
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                out.append(pytest.param(obj, id=f"{module.__name__}.{name}"))
    return out


def sections(doc: str) -> dict[str, str]:
    """numpydoc sections of a (dedented) docstring: title -> body text."""
    found = list(_HEADER.finditer(doc))
    out = {}
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(doc)
        out[m.group("title").strip()] = doc[m.end() : end]
    return out


def documented_names(body: str) -> set[str]:
    """Names of the entries of a Parameters/Attributes section body.

    Entries are the unindented lines (``name : type``, or ``a, b : int``);
    their descriptions are indented.
    """
    names = set()
    for line in body.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        m = _ENTRY.match(line)
        if m:
            for part in m.group("names").split(","):
                names.add(part.strip().lstrip("*"))
    return names


def signature_names(func) -> list[str]:
    """Parameters of ``func`` a caller passes, without ``self`` / ``cls``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.name not in ("self", "cls")]


def test_sections_parser():
    doc = inspect.cleandoc(
        """Summary.

        Parameters
        ----------
        a, b : int
            Two ints.
        **kwargs
            More.

        Returns
        -------
        int
        """
    )
    found = sections(doc)
    assert list(found) == ["Parameters", "Returns"]
    assert documented_names(found["Parameters"]) == {"a", "b", "kwargs"}


def test_every_public_name_is_checked():
    checked = {p.id for p in _public_objects()}
    assert "numbadam.Adam" in checked
    assert "numbadam.distributed.launched_under_mpi" in checked
    assert "numbadam.schedules.serialize" in checked
    assert "numbadam.cli.demo.embedding.train_embedding_distributed" in checked
    assert len(checked) >= 30


@pytest.mark.parametrize("obj", _public_objects())
def test_examples_section(obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{obj.__qualname__} has no docstring"
    found = sections(doc)
    assert "Examples" in found, (
        f"{obj.__qualname__}'s docstring has no Examples section "
        f"(sections: {list(found)})"
    )
    assert ">>>" in found["Examples"], (
        f"{obj.__qualname__}'s Examples section has no doctest (>>> line)"
    )


@pytest.mark.parametrize("obj", _public_objects())
def test_parameters_and_returns(obj):
    doc = inspect.getdoc(obj) or ""
    found = sections(doc)
    documented = documented_names(found.get("Parameters", ""))
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            documented |= documented_names(found.get("Attributes", ""))
        # A constructor inherited from a base class is documented there.
        wanted = signature_names(obj.__init__) if "__init__" in vars(obj) else []
    else:
        wanted = signature_names(obj)
        annotation = inspect.signature(obj).return_annotation
        if annotation not in (inspect.Signature.empty, None, "None"):
            assert "Returns" in found, (
                f"{obj.__qualname__} returns {annotation} but its docstring has no "
                f"Returns section (sections: {list(found)})"
            )
    missing = [name for name in wanted if name not in documented]
    assert not missing, (
        f"{obj.__qualname__}'s docstring does not document parameters {missing} "
        f"(documented: {sorted(documented)})"
    )


def _public_members(cls):
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod, property)) or (
            inspect.isfunction(value)
        ):
            yield name, value


@pytest.mark.parametrize(
    "cls", [p for p in _public_objects() if inspect.isclass(p.values[0])]
)
def test_members_have_docstrings(cls):
    missing = []
    for name, _member in _public_members(cls):
        # getdoc falls back to the docstring of the same name on a base class.
        doc = inspect.getdoc(getattr(cls, name))
        if not (doc or "").strip():
            missing.append(name)
    assert not missing, f"{cls.__qualname__} members without a docstring: {missing}"
