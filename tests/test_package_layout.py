"""The package's shape: commands apart from libraries, no import cycles.

Read from the source with `ast` (module-level and function-level imports alike), so a lazy
import cannot hide a cycle or a job reaching into another job.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "busgen_jax"
# The demo drives the other jobs' stages; no other job may import a job.
DRIVERS = {"busgen_jax.jobs.demo"}
# Modules of `busgen_jax.jobs` that are the job shell and shared names, not jobs.
JOB_SHELL = {"busgen_jax.jobs.shell", "busgen_jax.jobs.workdir", "busgen_jax.jobs.layout"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules `path` imports (`from pkg import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules and name != "busgen_jax"}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_the_package_root_holds_only_the_command_line():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "cli.py"]


def test_no_job_imports_another_job_except_the_demo():
    graph = _graph()
    jobs = {m for m in graph if m.startswith("busgen_jax.jobs.")} - JOB_SHELL
    reaches = {
        (job, imported) for job in jobs - DRIVERS for imported in graph[job] if imported in jobs
    }
    assert reaches == set()


def test_libraries_do_not_import_jobs():
    graph = _graph()
    jobs = {m for m in graph if m.startswith("busgen_jax.jobs.")} - JOB_SHELL
    commands = jobs | {"busgen_jax.cli"} | {m for m in graph if m.startswith("busgen_jax.serve")}
    reaches = {
        (library, imported)
        for library in graph.keys() - commands - JOB_SHELL
        for imported in graph[library]
        if imported in jobs
    }
    assert reaches == set()


def test_there_are_no_import_cycles():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 finished

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                cycles.append(stack[stack.index(child) :] + [child])
            elif child not in state:
                visit(child, [*stack, child])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_layout_check_sees_lazy_imports(tmp_path):
    """A function-level import counts: the checks above would otherwise miss the usual hiding
    place of a cycle."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from busgen_jax.jobs import pretrain\n")
    modules = {"busgen_jax.jobs.pretrain": source, "busgen_jax.jobs": source}
    assert _imports(source, modules) == {"busgen_jax.jobs.pretrain"}
