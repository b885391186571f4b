"""Sphinx configuration of daskglm's documentation site.

Build it (warnings are errors, as in CI)::

    python -m pip install ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The notebooks (``docs/notebooks``) and the pages written as MyST notebooks are
executed at every build on small simulated data, so the pages show real outputs.
``DASKGLM_DOCS_NO_EXECUTE=notebooks/*,lazy_results.md`` (patterns of pages) skips executing those pages
while writing others. The build is offline: names of other libraries are shown as text, not links.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import daskglm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's daskglm even when another copy is installed

# The notebooks' kernels inherit this environment: small data, and matplotlib's inline backend (a backend
# set for headless machines, MPLBACKEND=agg, would draw no figure into the pages).
os.environ.setdefault("DASKGLM_NOTEBOOK_SIZE", "small")
os.environ.pop("MPLBACKEND", None)

project = "daskglm"
author = "the daskglm developers"
copyright = "the daskglm developers"
release = daskglm.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_nb",
    "sphinxarg.ext",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "generated/*.md", "**/.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
templates_path = ["_templates"]

# --- Cross-references: every reference to a daskglm name must resolve. -------------------------------
# The build is offline (no intersphinx inventories), so names of other libraries cannot become links;
# they are shown as text. A wrong or stale reference to daskglm itself is still an error.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|xarray|xr|pandas|pd|nibabel|dask|distributed|nilearn|sklearn|scipy|zarr|fsspec"
               r"|matplotlib|pathlib|os|collections|typing|argparse|concurrent|threading|datetime|numbers"
               r"|builtins|psutil|joblib|Path)(\..*)?"),
    # numpydoc's type words ("array-like of shape (n_voxels,)", "optional", "default ...")
    (r"py:.*", r".*\s.*"),
    (r"py:.*", r"(array|array-like|array_like|ndarray|DataFrame|Dataset|DataArray|Client|Nifti1Image|"
               r"Niimg-like|NiftiMasker|ArrayLike|callable|iterable|sequence|mapping|PathLike|path-like|"
               r"optional|default|scalar|int|float|str|bool|dict|list|tuple|None|True|False|object|bytes|"
               r"Sequence|Mapping|Iterable|Iterator|Callable|Any|Literal|Union|Optional|self|np\.ndarray|"
               r"\{.*\}|'.*'|\".*\"|shape|of|or|and|keys|values|.*-like|\.\.\.)"),
]

# --- API reference ---
SUBPACKAGES = ("runtime", "io", "store", "glm", "models", "bids", "datasets")  # pipeline order, as architecture.md


def write_subpackage_pages(folder: Path) -> None:
    """One page per subpackage: its ``__all__`` less the names documented under ``daskglm`` itself.

    Written before Sphinx looks for sources, so that autosummary then writes a page per name.
    """
    folder.mkdir(exist_ok=True)
    for name in SUBPACKAGES:
        module = importlib.import_module(f"daskglm.{name}")
        rest = [n for n in module.__all__ if n not in daskglm.__all__]
        title = f"daskglm.{name}"
        lines = [title, "=" * len(title), "", f".. automodule:: daskglm.{name}", "   :no-members:", "",
                 f".. currentmodule:: daskglm.{name}", ""]
        if rest:
            lines += [".. autosummary::", "   :toctree: .", "   :nosignatures:", ""] + [f"   {n}" for n in rest]
        text = "\n".join(lines) + "\n"
        page = folder / f"daskglm.{name}.rst"
        if not page.exists() or page.read_text() != text:
            page.write_text(text)


write_subpackage_pages(Path(__file__).parent / "generated")

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    "show-inheritance": True,
    # scikit-learn's metadata-routing setters, generated on every estimator class
    "exclude-members": "set_fit_request,set_score_request,set_transform_request,set_predict_request",
}
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Docstring errors fail the build: a missing docstring, a parameter undocumented, unknown, out of order or
# without a description, a return value or a generator's yield without one.
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "PR03", "PR07", "RT03", "YD01"}

# --- Notebooks: executed at each build; a cell that raises fails the build ------------------------------
nb_execution_mode = "force"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_excludepatterns = [p for p in os.environ.get("DASKGLM_DOCS_NO_EXECUTE", "").split(",") if p]
nb_execution_in_temp = True  # files a page writes go to a temporary folder, not into docs/
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# --- HTML -----------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"daskglm {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
# the colour mode before a reader picks one (unset, the theme's script logs an error on every page)
html_context = {"default_mode": "auto"}
html_static_path: list[str] = []
html_show_sourcelink = False


# --- One name per object ----------------------------------------------------------------------------------
# Docstrings refer to objects by the module that defines them (``daskglm.glm.fit.fit_run``), or by a bare
# name within their own module; the reference documents each under the public name users import
# (``daskglm.fit_run``). A reference that names the same Python object as a documented name links there;
# one naming an existing daskglm object that the reference does not document (a module's internals) is shown
# as text; one naming nothing (a typo, a renamed function) stays an error.

_DOCSTRING_OF = re.compile(r"docstring of ([\w.]+)")
_ROLES = {"class": "class", "exception": "exc", "function": "func", "method": "meth", "module": "mod",
          "data": "data", "attribute": "attr", "property": "attr"}


def _resolve(path: str):
    """The object at a dotted path (a module and attributes), or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _candidates(node) -> list[str]:
    """Dotted paths the reference may mean: as written, and within each module enclosing its docstring."""
    target = node["reftarget"].lstrip("~.")
    scopes = [node.get("py:module") or ""]
    where = _DOCSTRING_OF.search(str(node.source or ""))
    if where:
        parts = where.group(1).split(".")
        scopes += [".".join(parts[:cut]) for cut in range(len(parts), 0, -1)]
    paths = [target] + [f"{scope}.{target}" for scope in scopes if scope]
    return [path for path in dict.fromkeys(paths) if path.startswith("daskglm")]


def _link_same_object(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    documented = {}
    for name, entry in domain.objects.items():
        if name.startswith("daskglm"):
            obj = _resolve(name)
            if obj is not None and not isinstance(obj, (bool, int, float, str, bytes, type(None))):
                documented.setdefault(id(obj), (name, entry.objtype))
    for path in _candidates(node):
        obj = _resolve(path)
        if obj is None:
            continue
        if id(obj) in documented:
            name, objtype = documented[id(obj)]
            return domain.resolve_xref(env, node["refdoc"], app.builder, _ROLES.get(objtype, "obj"), name, node,
                                       contnode)
        return contnode  # a daskglm object outside the reference: its name, as text
    return None


def setup(app):
    app.connect("missing-reference", _link_same_object)
