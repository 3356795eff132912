"""Sphinx configuration of the API reference, generated from the docstrings.

Build it from the repository root (``pip install -e ".[docs]"``)::

    sphinx-build -W --keep-going -b html docs/reference docs/reference/build

``tests/test_docs.py`` runs the same build with warnings as errors. The modules documented are
listed once, in :data:`MODULES`: each gets a page ``modules/<name>.rst`` (written at the start of
every build, not committed) holding ``automodule`` with its public members (its ``__all__``).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))  # the source tree, installed or not

#: every public module the reference documents, in the order of the index; adding, renaming or
#: removing a module of ``bt_laplace`` means changing this list (and nothing else here)
MODULES = [
    "bt_laplace",
    "bt_laplace.choices",
    "bt_laplace.data",
    "bt_laplace.text",
    "bt_laplace.text_options",
    "bt_laplace.reading",
    "bt_laplace.inputs",
    "bt_laplace.model",
    "bt_laplace.fit",
    "bt_laplace.options",
    "bt_laplace.posterior",
    "bt_laplace.predictive",
    "bt_laplace.io",
    "bt_laplace.persistence",
    "bt_laplace.penalties",
    "bt_laplace.rlhf",
    "bt_laplace.labeling",
    "bt_laplace.rewards",
    "bt_laplace.serve",
    "bt_laplace.metrics",
    "bt_laplace.bradley_terry",
    "bt_laplace.curvature",
    "bt_laplace.structures",
    "bt_laplace.structures.kron",
    "bt_laplace.structures.kron_factors",
    "bt_laplace.structures.low_rank",
    "bt_laplace.prior",
    "bt_laplace.prior.settings",
    "bt_laplace.prior.marglik",
    "bt_laplace.prior.evidence",
    "bt_laplace.prior.kernel",
    "bt_laplace.prior.spectrum",
    "bt_laplace.prior.pair_io",
    "bt_laplace.prior.gridsearch",
    "bt_laplace.prior.calibration",
    "bt_laplace.prior.precision",
    "bt_laplace.plot",
    "bt_laplace.testing",
]

project = "bt_laplace"
author = "bt_laplace developers"
copyright = "bt_laplace developers, MIT license"  # noqa: A001 - Sphinx's name

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["build", "README.md"]
html_theme = "alabaster"
html_theme_options = {"nosidebar": False}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True


def _title(text: str) -> str:
    return f"{text}\n{'=' * len(text)}\n"


def _top_level() -> str:
    """The ``bt_laplace`` page: the package docstring and each top-level name, linked to the
    page of the module that defines it (documented here when that module is private)."""
    import bt_laplace

    lines = [_title("bt_laplace"), ".. automodule:: bt_laplace", ""]
    lines += ["Top-level names", "---------------", ""]
    here = []
    for name in bt_laplace.__all__:
        obj = getattr(bt_laplace, name)
        module = obj.__module__
        kind = "class" if inspect.isclass(obj) else "func"
        if module in MODULES:
            lines.append(f"- :py:{kind}:`{name} <{module}.{obj.__qualname__}>` ({module})")
        else:
            lines.append(f"- :py:{kind}:`bt_laplace.{name}`")
            directive = "autoexception" if _issubclass_safe(obj, BaseException) else "autoclass"
            here.append(
                f".. {directive if kind == 'class' else 'autofunction'}:: bt_laplace.{name}"
            )
    return "\n".join([*lines, "", *here, ""])


def _issubclass_safe(obj: object, cls: type) -> bool:
    return inspect.isclass(obj) and issubclass(obj, cls)


def _module_page(module: str) -> str:
    return "\n".join(
        [
            _title(module),
            f".. automodule:: {module}",
            "   :members:",
            "   :show-inheritance:",
            "",
        ]
    )


def _write_module_pages(app) -> None:
    """Write ``modules/<name>.rst`` for every entry of :data:`MODULES` (only where changed, so
    incremental builds stay incremental) and remove pages of modules no longer listed."""
    folder = Path(app.srcdir) / "modules"
    folder.mkdir(exist_ok=True)
    pages = {m: _top_level() if m == "bt_laplace" else _module_page(m) for m in MODULES}
    for stale in folder.glob("*.rst"):
        if stale.stem not in pages:
            stale.unlink()
    for module, text in pages.items():
        path = folder / f"{module}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def _module_toctree(app, docname: str, source: list[str]) -> None:
    """Fill the index's ``.. modules::`` placeholder with the toctree of :data:`MODULES`."""
    if docname == root_doc:
        entries = "\n".join(f"   modules/{m}" for m in MODULES)
        toctree = f".. toctree::\n   :maxdepth: 1\n   :caption: Modules\n\n{entries}\n"
        source[0] = source[0].replace(".. modules::\n", toctree)


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out the "Alias for field number N" entries of NamedTuple fields: their class
    docstring describes them (napoleon's ``Attributes:``), and both would describe one name."""
    doc = getattr(obj, "__doc__", None) or ""
    return True if doc.startswith("Alias for field number") else None


def setup(app) -> dict[str, bool]:
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("builder-inited", _write_module_pages)
    app.connect("source-read", _module_toctree)
    return {"parallel_read_safe": True}
