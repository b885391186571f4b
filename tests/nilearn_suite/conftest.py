"""nilearn 0.14's GLM test suite, run against daskglm: fixtures, scope, expected failures, counts.

* nilearn's fixtures (``nilearn/conftest.py``, ``nilearn/glm/tests/conftest.py``)
  are made available to the test modules of this folder.
* Scope: a collected test is *applicable* when it exercises one of daskglm's
  stand-ins (its code, the module helpers it calls or its fixtures name a
  redirected object, or it is parametrized with a daskglm instance); the
  others test nilearn's own helpers, which daskglm does not replace, and are
  deselected.
* Every applicable test must pass, except those in
  :data:`expected_failures.EXPECTED_FAILURES`, each with its reason, which
  are strict ``xfail``: one that starts passing fails the run, so the list
  stays true.
* The terminal summary prints the counts (``python -m pytest tests/nilearn_suite``).
* ``slow``: the suite is, except its cheap modules (:data:`_CHEAP`, about a second in all), so that
  ``pytest -m "not slow"`` stays quick.
"""

from __future__ import annotations

import collections
import inspect
import os
import types
from typing import Any

import nilearn.conftest as _nilearn_conftest
import nilearn.glm.tests.conftest as _nilearn_glm_conftest
import pytest

from nilearn_suite.expected_failures import EXPECTED_FAILURES
from nilearn_suite.nilearn_redirect import REDIRECTED, daskglm_objects

# nilearn's fixtures, under their own names (its hooks and collect_ignore are not taken).
for _module in (_nilearn_conftest, _nilearn_glm_conftest):
    globals().update({name: obj for name, obj in vars(_module).items()
                      if type(obj).__name__ == "FixtureFunctionDefinition"})

_HERE = os.path.dirname(__file__)


@pytest.fixture(autouse=True, scope="session")
def _daskglm_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run stores of the suite's fits go to a temporary folder, not the user's cache."""
    saved = os.environ.get("DASKGLM_CACHE")
    os.environ["DASKGLM_CACHE"] = str(tmp_path_factory.mktemp("daskglm_cache"))
    yield
    if saved is None:
        os.environ.pop("DASKGLM_CACHE", None)
    else:
        os.environ["DASKGLM_CACHE"] = saved


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _refers(func: Any, seen: set[int]) -> bool:
    """Whether ``func``, or a helper of nilearn's test modules it calls, names a redirected object."""
    func = inspect.unwrap(getattr(func, "__wrapped__", func))
    code = getattr(func, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    names = _code_names(code)
    if names & set(REDIRECTED):
        return True
    module_globals = getattr(func, "__globals__", {})
    for name in names:
        helper = module_globals.get(name)
        if (isinstance(helper, types.FunctionType)
                and helper.__module__.startswith("nilearn.glm.tests") and _refers(helper, seen)):
            return True
    return False


def _applicable(item: pytest.Function) -> bool:
    daskglm_types = tuple(obj for obj in daskglm_objects().values() if isinstance(obj, type))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(isinstance(v, daskglm_types) for v in callspec.params.values()):
        return True
    seen: set[int] = set()
    if _refers(item.function, seen):
        return True
    for defs in item._fixtureinfo.name2fixturedefs.values():
        if any(_refers(fixturedef.func, seen) for fixturedef in defs):
            return True
    return False


def _key(item: pytest.Item) -> str:
    """``<nilearn module>::<test id>``, the key of :data:`EXPECTED_FAILURES`."""
    module = os.path.basename(str(item.path)).removeprefix("test_nilearn_")
    return f"test_{module.removesuffix('.py')}::{item.name}"


_COUNTS: collections.Counter[str] = collections.Counter()
_LISTED: set[str] = set()  # node ids of the listed expected failures
_STALE: list[str] = []
_OURS: set[str] = set()  # node ids of the applicable tests
_MODULES = [name for name in os.listdir(_HERE) if name.startswith("test_nilearn_") and name.endswith(".py")]
#: The modules whose applicable tests take about a second in all: not ``slow`` (the others are, as a whole).
_CHEAP = {"test_nilearn_non_parametric_inference.py", "test_nilearn_utils.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if str(item.path).startswith(_HERE)]
    if not ours:
        return
    keep, drop = [], []
    for item in ours:
        (keep if isinstance(item, pytest.Function) and _applicable(item) else drop).append(item)
    _COUNTS["not applicable"] = len(drop)
    _COUNTS["applicable"] = len(keep)
    _OURS.update(item.nodeid for item in keep)
    for item in keep:
        if os.path.basename(str(item.path)) not in _CHEAP:
            item.add_marker(pytest.mark.slow)
        reason = EXPECTED_FAILURES.get(_key(item))
        if reason is not None:
            _LISTED.add(item.nodeid)
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in set(drop)]
    # Entries naming no applicable test are stale; checked when the whole suite ran unfiltered.
    modules = {os.path.basename(str(item.path)) for item in ours}
    unfiltered = not config.getoption("keyword") and not config.getoption("markexpr")
    if unfiltered and len(modules) == len(_MODULES):
        _STALE.extend(sorted(set(EXPECTED_FAILURES) - {_key(item) for item in keep}))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _OURS:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.skipped and hasattr(report, "wasxfail"):
            if report.nodeid in _LISTED:
                outcome = "listed difference"
            else:
                outcome = "nilearn xfail"  # nilearn expects its own estimator to fail these too
        else:
            outcome = report.outcome
        _COUNTS[outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _COUNTS:
        return
    c = _COUNTS
    write = terminalreporter.write_line
    write("")
    write(f"nilearn 0.14 GLM suite against daskglm: {c['applicable']} applicable tests "
          f"({c['not applicable']} deselected: they test nilearn's own helpers)")
    write(f"  passed {c['passed']}, failed {c['failed']}; listed expected failures (deliberate differences): "
          f"{c['listed difference']}; nilearn's own expected failures "
          f"{c['nilearn xfail']}; skipped {c['skipped']}")
    nilearn_passes = c["passed"] + c["failed"] + c["listed difference"]  # the tests nilearn passes
    if nilearn_passes:
        write(f"  tests that nilearn passes: {c['passed']} of {nilearn_passes} pass against daskglm "
              f"({100 * c['passed'] / nilearn_passes:.1f} %)")
    for key in _STALE:
        write(f"  stale entry of expected_failures.py (no such applicable test): {key}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _STALE and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _in_tmp_path(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each nilearn test runs in its own folder: some cache to relative paths (memory="nilearn_cache")."""
    if request.node.nodeid in _OURS:
        monkeypatch.chdir(tmp_path)


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("thread_unsafe", "ai_generated", "single_process"):
        config.addinivalue_line("markers", f"{marker}: nilearn's own test marker")
