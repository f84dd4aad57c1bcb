"""The `deps:` of every stage in dvc.yaml are the project code the stage runs, no less and no
more.

DVC reruns a stage only when one of its deps changes, and those lists are written by hand. A
module the stage imports but does not list (the `variant` stage runs flows.prepare, which
imports abp.variants, which imports abp.observe) leaves stale outputs cached as valid after a
change to it; a listed file the stage never imports reruns it (training included) for nothing.

So the deps are checked against the code, read with `ast` (nothing is imported, no process is
started, a fraction of a second): the module each command of a stage runs (`python -m
<module>`), and every project module that module imports, at any depth. Python runs a module
for each of these, so each counts:
- an import anywhere in a file, inside functions too (they run when called), but not under
  `if TYPE_CHECKING:` (never runs);
- the `__init__.py` of every package along the path: `import abp.sources.bundled` and `python
  -m flows.prepare` run abp/__init__.py, abp/sources/__init__.py and flows/__init__.py first;
- `from pkg import name` where `name` is a submodule of pkg;
- `importlib.import_module("…")` / `__import__("…")` with a literal name;
- the non-Python files inside the folder of an imported package (data it ships, e.g. under
  abp/sources/), since a module most likely reads those; there are none today.
What a module reads through other paths (params.yaml, files named in arguments, a file located
from `__file__` elsewhere in the repository) is out of reach of `ast` and left to `params:` and
the data deps.

A dep covers a file when it is that file or a folder above it. Deps that are not code (data,
models, metrics) are left alone, and so is every dep with a `${…}` template: its value is
only known per foreach entry. A dep is code when it lies in a project package (a top-level
folder with an `__init__.py`: abp, flows, bench) or ends in .py. A listed folder is accepted
when the stage runs at least one file in it: a folder dep is a deliberate choice (it keeps
covering modules added to it later) whose price, reruns for the files in it the stage does
not import, is for the owner of dvc.yaml to weigh; a folder the stage runs nothing from is
reported like an unused file.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

from flows.stage import STAGES

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = REPO / "dvc.yaml"
# The project's packages: top-level folders with an __init__.py, importable from the
# repository root, where DVC runs the stages.
PACKAGES = frozenset(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file())
# What may wrap `python` in a command line without changing what it runs.
WRAPPERS = {"env", "exec", "time", "nice", "nohup"}
PYTHON = re.compile(r"python(\d+(\.\d+)?)?$")


# --- What a stage's command runs ----------------------------------------------------------


def commands(cmd: str | list[str]) -> list[list[str]]:
    """The words of each simple command in a stage's `cmd` (a string or DVC's list form):
    lines and `&&`, `||`, `;`, `|` separate commands."""
    found = []
    for line in "\n".join(cmd if isinstance(cmd, list) else [cmd]).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = []
        for token in lexer:
            if token and set(token) <= set("&|;()"):
                found.append(words)
                words = []
            else:
                words.append(token)
        found.append(words)
    return [words for words in found if words]


def python_entries(words: list[str]) -> list[str]:
    """What one command line runs with Python: `-m <module>` as the module's name, a script
    as its path; nothing for other programs (or `python -c`)."""
    while words and (re.fullmatch(r"\w+=.*", words[0]) or words[0] in WRAPPERS):
        words = words[1:]
    if not words or not PYTHON.match(PurePosixPath(words[0]).name):
        return []
    args = iter(words[1:])
    for word in args:
        if word == "--" or not word.startswith("-"):
            return [] if word == "--" else [word]  # a script, or `-` (stdin)
        if word.startswith("--"):
            continue  # no long option of python takes a separate value that matters here
        for i, flag in enumerate(word[1:], start=1):
            if flag in "mcWX":  # options that take a value: the rest of the word, or the next
                value = word[i + 1 :] or next(args, "")
                if flag == "m":
                    # `python -m flows <stage>` runs flows.<stage> (flows/stage.py), by name.
                    stage = next(args, "") if value == "flows" else ""
                    return [f"-m {value}"] + ([f"-m flows.{stage}"] if stage in STAGES else [])
                if flag == "c":
                    return []
                break
    return []


def entries(cmd: str | list[str]) -> list[str]:
    """`-m <module>` or a script path, for every Python command of a stage's `cmd`."""
    return [entry for words in commands(cmd) for entry in python_entries(words)]


# --- The project files a module runs -------------------------------------------------------


def module_file(name: str) -> str | None:
    """The repository-relative file of a project module or package, or None (third-party,
    standard library, or no such module)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES or not all(part.isidentifier() for part in parts):
        return None
    for candidate in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
        if (REPO / candidate).is_file():
            return candidate.as_posix()
    return None


def module_name(path: str) -> str:
    parts = list(PurePosixPath(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def with_parents(name: str) -> list[str]:
    """`a.b.c` → a, a.b, a.b.c: importing a module runs every package above it first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST):
    """Every node of the tree, less the bodies of `if TYPE_CHECKING:` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@cache
def imported_modules(path: str) -> frozenset[str]:
    """The names of every module that running `path` imports (project or not), each package
    above a module included."""
    tree = ast.parse((REPO / path).read_text(), filename=path)
    own = module_name(path)
    package = own if path.endswith("__init__.py") else own.rpartition(".")[0]
    names = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.update(with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: up level-1 packages from this module's own
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module
            names.update(with_parents(base_name))
            # `from pkg import name`: name may be a submodule, which the import then runs.
            names.update(f"{base_name}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("__import__", "import_module")
                )
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names.update(with_parents(node.args[0].value))
    return frozenset(names)


def package_data(init: str) -> set[str]:
    """The non-Python files inside the folder of a package (not of its subpackages)."""
    found = set()
    for folder, subfolders, files in os.walk(REPO / PurePosixPath(init).parent):
        subfolders[:] = [
            d
            for d in subfolders
            if not d.startswith(".")
            and d != "__pycache__"
            and not (Path(folder, d) / "__init__.py").is_file()
        ]
        found.update(
            Path(folder, f).relative_to(REPO).as_posix()
            for f in files
            if not f.startswith(".") and f != "py.typed" and not f.endswith((".py", ".pyc", ".pyi"))
        )
    return found


@cache
def closure(entry: str) -> dict[str, str]:
    """Every project file that running `entry` (`-m <module>` or a script path) runs or
    reads, each with the file that brought it in (the command, for those it runs first), so
    a report can say why. Raises LookupError when the entry is no project code the check
    can read."""
    if entry.startswith("-m "):
        name = entry[3:]
        if module_file(name) is None:
            raise LookupError(name)
        todo = [(module_file(part), f"python {entry}") for part in with_parents(name)]
        if todo[-1][0].endswith("__init__.py"):  # `python -m package` runs its __main__
            todo.append((module_file(f"{name}.__main__"), todo[-1][0]))
            if todo[-1][0] is None:
                raise LookupError(name)
    elif (REPO / entry).is_file() and entry.endswith(".py"):
        todo = [(PurePosixPath(os.path.normpath(entry)).as_posix(), f"python {entry}")]
    else:
        raise LookupError(entry)
    runs: dict[str, str] = {}
    while todo:  # breadth first, so each file's recorded chain of imports is a shortest one
        path, by = todo.pop(0)
        if path is None or path in runs:
            continue
        runs[path] = by
        todo.extend((module_file(name), path) for name in sorted(imported_modules(path)))
    for init in [path for path in runs if path.endswith("__init__.py")]:
        runs.update({data: init for data in sorted(package_data(init)) if data not in runs})
    return runs


def chain(runs: dict[str, str], path: str) -> str:
    """command → … → path, by the imports that bring `path` in."""
    links = [path]
    while links[-1] in runs:
        links.append(runs[links[-1]])
    return " → ".join(reversed(links))


# --- The check -----------------------------------------------------------------------------


def stage_templates(dvc: dict) -> dict[str, dict]:
    """Each stage's definition: the `do:` template of a foreach stage, which every instance
    shares (its deps differ only in `${…}` entries, left alone here)."""
    return {name: stage.get("do", stage) for name, stage in dvc["stages"].items()}


def normalized(dep: str) -> str:
    return PurePosixPath(os.path.normpath(dep)).as_posix()


def is_code(dep: str) -> bool:
    return "${" not in dep and (PurePosixPath(dep).parts[0] in PACKAGES or dep.endswith(".py"))


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep + "/")


def problems(dvc: dict) -> tuple[list[str], list[str]]:
    """(missing, unused): a line for each project file a stage runs that its deps do not
    cover (and each command the check cannot read), and one for each code dep the stage
    never runs, each saying what to change in dvc.yaml."""
    missing, unused = [], []
    for stage, definition in stage_templates(dvc).items():
        deps = [normalized(dep) for dep in definition.get("deps") or [] if isinstance(dep, str)]
        runs: dict[str, str] = {}
        for entry in entries(definition.get("cmd", "")):
            try:
                runs.update({k: v for k, v in closure(entry).items() if k not in runs})
            except LookupError:
                missing.append(
                    f"stage {stage} runs `python {entry}`, which is no module or "
                    f"script of the project this check can read: fix its cmd in "
                    f"dvc.yaml (or teach tests/test_dvc_deps.py to read it)"
                )
        for path in sorted(runs):
            if not any(covers(dep, path) for dep in deps if "${" not in dep):
                missing.append(
                    f"add {path} to the deps of stage {stage} in dvc.yaml ({chain(runs, path)})"
                )
        for dep in deps:
            if not is_code(dep):
                continue
            if not (REPO / dep).exists():
                unused.append(
                    f"remove {dep} from the deps of stage {stage} in dvc.yaml: "
                    f"there is no such file or folder"
                )
            elif not any(covers(dep, path) for path in runs):
                what = f"anything in {dep}" if (REPO / dep).is_dir() else dep
                unused.append(
                    f"remove {dep} from the deps of stage {stage} in dvc.yaml: the "
                    f"stage never runs {what}, so a change there reruns it for "
                    f"nothing"
                )
    return missing, unused


def load_dvc() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())


def runs_of(definition: dict) -> dict[str, str]:
    runs: dict[str, str] = {}
    for entry in entries(definition["cmd"]):
        runs.update(closure(entry))
    return runs


def code_stages(dvc: dict) -> dict[str, dict]:
    """The stages that run project code, each with its code deps replaced by exactly the
    files it runs (its other deps kept): dvc.yaml as it should be."""
    fixed = {}
    for stage, definition in stage_templates(dvc).items():
        runs = runs_of(definition) if entries(definition.get("cmd", "")) else {}
        if runs:
            deps = [dep for dep in definition.get("deps") or [] if not is_code(normalized(dep))]
            fixed[stage] = {**definition, "deps": deps + sorted(runs)}
    return fixed


# --- The tests -----------------------------------------------------------------------------


def test_every_project_file_a_stage_runs_is_among_its_deps():
    missing, _ = problems(load_dvc())
    if missing:
        pytest.fail(
            f"{len(missing)} file(s) a stage runs but does not depend on (a change "
            f"to one leaves the stage's outputs cached as valid):\n"
            + "\n".join(missing)
            + "\n(a folder dep, such as abp, covers every file under it)",
            pytrace=False,
        )


def test_every_code_dep_of_a_stage_is_code_the_stage_runs():
    _, unused = problems(load_dvc())
    if unused:
        pytest.fail(
            f"{len(unused)} code dep(s) a stage never runs:\n" + "\n".join(unused), pytrace=False
        )


def test_every_stage_that_runs_python_has_a_command_the_check_can_read():
    # A cmd the parser does not understand would otherwise pass unchecked, as if clean.
    stages = stage_templates(load_dvc())
    assert stages
    for stage, definition in stages.items():
        if "python" in str(definition.get("cmd", "")):
            assert entries(definition["cmd"]), (
                f"stage {stage}: no Python command found in its cmd {definition['cmd']!r}"
            )


def test_the_check_reports_each_module_removed_from_a_stages_deps_for_that_stage_alone():
    dvc = load_dvc()
    fixed = code_stages(dvc)
    assert fixed
    # dvc.yaml with each stage's code deps exactly what it runs: nothing to report.
    assert problems({"stages": fixed}) == ([], [])
    for stage, definition in fixed.items():
        runs = runs_of(definition)
        for path in runs:  # the entry module itself, the __init__.py files, deep imports
            deps = [dep for dep in definition["deps"] if dep != path]
            missing, unused = problems({"stages": {stage: {**definition, "deps": deps}}})
            assert unused == []
            assert len(missing) == 1, (stage, path, missing)
            assert missing[0].startswith(f"add {path} to the deps of stage {stage} in dvc.yaml")


def test_the_check_reports_a_module_removed_from_the_real_dvc_yaml():
    # The same on dvc.yaml as it is: dropping one listed module adds exactly one report.
    dvc = load_dvc()
    before = set(problems(dvc)[0])
    removed = None
    for stage, definition in stage_templates(dvc).items():
        runs = runs_of(definition)
        deps = definition.get("deps") or []
        for dep in deps:
            others = [d for d in deps if d != dep and "${" not in d]
            if dep in runs and not any(covers(normalized(d), dep) for d in others):
                removed = stage, dep
                definition["deps"] = [d for d in deps if d != dep]
                break
        if removed:
            break
    if removed is None:
        pytest.skip("no stage lists a module of its own as a single file")
    stage, dep = removed
    added = set(problems(dvc)[0]) - before
    assert len(added) == 1 and added.pop().startswith(
        f"add {dep} to the deps of stage {stage} in dvc.yaml"
    )


def test_the_check_reports_a_listed_module_or_folder_the_stage_never_runs():
    fixed = code_stages(load_dvc())
    stage, definition = next(iter(fixed.items()))
    runs = runs_of(definition)
    project = sorted(
        p.relative_to(REPO).as_posix()
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    idle_module = next(path for path in project if path not in runs)
    idle_folders = sorted(
        {str(PurePosixPath(path).parent) for path in project}
        - {str(parent) for path in runs for parent in PurePosixPath(path).parents}
    )
    assert idle_folders  # bench/, at least: no stage runs the benchmarks
    missing_file = f"{PurePosixPath(idle_module).parent}/no_such_module.py"
    for dep in [idle_module, idle_folders[0], missing_file]:
        stages = {**fixed, stage: {**definition, "deps": definition["deps"] + [dep]}}
        missing, unused = problems({"stages": stages})
        assert missing == []
        assert len(unused) == 1 and unused[0].startswith(
            f"remove {dep} from the deps of stage {stage} in dvc.yaml"
        ), (dep, unused)
    # A folder the stage runs some of the files in is a deliberate, wider dep: accepted.
    used_folder = PurePosixPath(idle_module).parts[0]
    if any(covers(used_folder, path) for path in runs):
        stages = {**fixed, stage: {**definition, "deps": definition["deps"] + [used_folder]}}
        assert problems({"stages": stages}) == ([], [])


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ("python -m flows.prepare ${key}", ["-m flows.prepare"]),
        (
            "python -m flows.train ${key} --out models/${key} && python3 -u -m flows.evaluate x",
            ["-m flows.train", "-m flows.evaluate"],
        ),
        (
            ["python -m flows.a", "dvc plots show; .venv/bin/python -um flows.b"],
            ["-m flows.a", "-m flows.b"],
        ),
        ("PYTHONHASHSEED=0 env python -W ignore -mflows.c 'a b' | tee log", ["-m flows.c"]),
        ("python flows/d.py --x 1\npython -c 'import flows'", ["flows/d.py"]),
        ("dvc repro", []),
        ("python -m flows train ${key} --models-root models", ["-m flows", "-m flows.train"]),
        ("python -m flows --help", ["-m flows"]),
    ],
)
def test_the_modules_a_cmd_runs_are_read_from_each_python_command(cmd, expected):
    assert entries(cmd) == expected
