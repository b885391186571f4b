"""Load nilearn's own GLM test modules with daskglm's estimators in place of nilearn's.

nilearn's wheel ships its GLM tests (``nilearn/glm/tests``). Each thin module
``test_nilearn_<name>.py`` beside this one imports one of them through
:func:`load_nilearn_tests`, which executes the installed test module while
nilearn's public GLM names (:data:`REDIRECTED`) point to daskglm's: the test
module's own ``from nilearn.glm... import FirstLevelModel`` then binds
daskglm's class. nilearn's library modules are restored right after the
import, so nilearn's own code (``save_glm_to_bids``, the estimator checks,
its BIDS discovery) stays nilearn's and receives daskglm's objects, as a
user's script would. No nilearn test code is copied into this repository.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest

import daskglm

#: nilearn's public GLM names that a user replaces by daskglm's ("change one import").
REDIRECTED: tuple[str, ...] = ("FirstLevelModel", "SecondLevelModel", "compute_fixed_effects",
                               "first_level_from_bids")

#: The modules nilearn's tests import those names from.
_SOURCES: tuple[str, ...] = ("nilearn.glm", "nilearn.glm.first_level", "nilearn.glm.first_level.first_level",
                             "nilearn.glm.second_level", "nilearn.glm.second_level.second_level",
                             "nilearn.glm.contrasts")


def daskglm_objects() -> dict[str, Any]:
    """The daskglm object standing in for each of :data:`REDIRECTED`."""
    return {name: getattr(daskglm, name) for name in REDIRECTED}


@contextmanager
def _redirected() -> Iterator[None]:
    """nilearn's GLM modules expose daskglm's objects under nilearn's names inside the block."""
    replacements = daskglm_objects()
    saved: list[tuple[ModuleType, str, Any]] = []
    try:
        for module_name in _SOURCES:
            module = importlib.import_module(module_name)
            for name, obj in replacements.items():
                if name in vars(module):
                    saved.append((module, name, vars(module)[name]))
                    setattr(module, name, obj)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def load_nilearn_tests(short_name: str) -> dict[str, Any]:
    """The namespace of ``nilearn.glm.tests.<short_name>``, imported against daskglm.

    Returns the module's public names (tests, fixtures, helpers) for the thin
    test module to adopt with ``globals().update(...)``: pytest then collects
    nilearn's tests there, and their globals are the nilearn test module's,
    where the redirected names are daskglm's.
    """
    full_name = f"nilearn.glm.tests.{short_name}"
    pytest.register_assert_rewrite(full_name)
    sys.modules.pop(full_name, None)  # always a fresh import under the redirection
    with _redirected():
        module = importlib.import_module(full_name)
    for name, obj in daskglm_objects().items():
        if name in vars(module) and vars(module)[name] is not obj:
            raise RuntimeError(f"{full_name} still binds nilearn's {name}: the redirection missed "
                               f"the module it imports it from")
    return {name: value for name, value in vars(module).items() if not name.startswith("__")}
