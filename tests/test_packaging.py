"""pyproject.toml declares what the code imports, in the right place: the library (abp/) needs
only `dependencies`, so `pip install abp-pipeline` does not pull Prefect, MLflow or DVC; the
pipeline (flows/) needs those plus the `pipeline` extra; and nothing declared goes unused."""

import ast
import configparser
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OURS = {"abp", "flows", "bench", "tests"}


def distribution(requirement: str) -> str:
    """`torch==2.14.1` → `torch`, in the normalised form (PEP 503)."""
    return normalise(re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0])


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(package: str) -> dict[str, set[str]]:
    """The third-party top-level modules the modules of `package` import: {module: files}."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in OURS and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def providers(module: str) -> frozenset[str]:
    """The installed distributions that provide a top-level module (mlflow: mlflow and
    mlflow-skinny, …): declaring any one of them declares the module."""
    return frozenset(normalise(d) for d in distributions_of().get(module, [module]))


@functools.cache
def distributions_of() -> dict[str, list[str]]:
    return packages_distributions()


def undeclared(modules: dict[str, set[str]], declared: set[str]) -> dict[str, list[str]]:
    return {m: sorted(files) for m, files in modules.items() if not providers(m) & declared}


CORE = {distribution(r) for r in PYPROJECT["project"]["dependencies"]}
PIPELINE = {distribution(r) for r in PYPROJECT["project"]["optional-dependencies"]["pipeline"]}
# Run as a command, not imported: `dvc repro` (make run, flows.pipeline); and DVC's YAML
# parser in C, which ruamel.yaml imports when it is there.
COMMANDS = {"dvc", "ruamel-yaml-clib"}


def test_the_library_imports_only_its_core_dependencies():
    imported = imported_modules("abp")
    missing = undeclared(imported, CORE)
    assert not missing, f"abp/ imports modules no [project] dependency provides: {missing}"
    assert not {"prefect", "mlflow", "dvc", "pydantic", "yaml"} & set(imported)


def test_the_pipeline_imports_only_what_it_declares_and_uses_all_of_it():
    imported = imported_modules("flows")
    for module, files in imported_modules("abp").items():
        imported.setdefault(module, set()).update(files)
    missing = undeclared(imported, CORE | PIPELINE)
    assert not missing, f"flows/ imports modules nothing declared provides: {missing}"
    used = set().union(*(providers(m) for m in imported))
    unused = sorted((CORE | PIPELINE) - used - COMMANDS)
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}"


@pytest.mark.parametrize("section", ["project", "build-system", "tool"])
def test_pyproject_points_nowhere_outside_the_repository(section):
    assert "../" not in repr(PYPROJECT.get(section))
    assert "../" not in (ROOT / "pyproject.toml").read_text()


def test_dvc_neither_reports_usage_nor_asks_for_updates():
    # No network at run time: DVC's analytics and its updater both call out.
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config.getboolean("core", "analytics") is False
    assert config.getboolean("core", "check_update") is False
