"""The project's shape, checked from the source: which packages exist, who imports whom, no path hacks,
one error root, and an install that never shadows (or is shadowed by) a user's own `models/` or `data/`."""
from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# The layout's packages and the one named after the model; nothing else is installed.
PACKAGES = {"llmformer", "export", "engines", "runtime", "calibration", "plugins_trt"}
NOT_INSTALLED = {"tests", "benchmarks"}
# Who may import whom (package level). Data flows llmformer -> export -> artifacts -> engines -> runtime;
# llmformer's training reads the runtime's parser so it trains on what deployment feeds.
ALLOWED = {
    "engines": set(),
    "runtime": {"engines"},
    "calibration": {"engines", "runtime", "llmformer"},
    "export": {"engines", "runtime", "calibration", "llmformer", "plugins_trt"},
    "llmformer": {"engines", "runtime", "plugins_trt"},
    "plugins_trt": {"llmformer"},
}
# The PyTorch engine is the one deployment module that runs the PyTorch side itself (lazily).
EXCEPTIONS = {("engines/torch_engine.py", "llmformer"), ("engines/torch_engine.py", "plugins_trt")}


def project_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports resolve to its own package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(path.relative_to(ROOT).parts[0] if node.level else node.module.split(".")[0])
    return names


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in project_files(*PACKAGES):
        rel = path.relative_to(ROOT).as_posix()
        src = rel.split("/")[0]
        for dst in imported_packages(path) & (PACKAGES | NOT_INSTALLED | {"models", "data", "train", "utils"}):
            if dst != src:
                edges.setdefault((src, dst), []).append(rel)
    return edges


def test_only_the_layouts_packages_and_llmformer_are_top_level():
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert top - NOT_INSTALLED == PACKAGES
    assert not [p.name for p in ROOT.glob("*.py")], "no top-level modules: they would be installed beside our packages"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for legacy in ("models", "data", "train", "utils"):
        assert f'"{legacy}' not in pyproject.split("[tool.setuptools.packages.find]")[1].split("\n\n")[0]


def test_packages_import_only_downwards():
    bad = []
    for (src, dst), files in package_edges().items():
        files = [f for f in files if (f, dst) not in EXCEPTIONS]
        if files and dst not in ALLOWED[src]:
            bad.append(f"{src} -> {dst} ({', '.join(files)})")
    assert not bad, "imports against the layout:\n" + "\n".join(bad)


def test_runtime_and_engines_import_no_pytorch_side():
    for path in project_files("runtime", "engines"):
        rel = path.relative_to(ROOT).as_posix()
        for name in imported_packages(path) & {"torch", "transformers", "llmformer", "export", "calibration"}:
            assert (rel, name) in EXCEPTIONS or (rel == "engines/torch_engine.py" and name == "torch"), \
                f"{rel} imports {name}"


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for (src, dst), files in package_edges().items():
        if dst in PACKAGES and any((f, dst) not in EXCEPTIONS for f in files):
            graph[src].add(dst)

    def cycle_from(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        for nxt in sorted(graph[node]):
            found = cycle_from(nxt, stack + [node])
            if found:
                return found
        return None

    for package in sorted(PACKAGES):
        cycle = cycle_from(package, [])
        assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_sys_path_edits_outside_tests_and_benchmarks():
    offenders = []
    for path in project_files(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((t for t in targets if isinstance(t, ast.Attribute)), None)
            if isinstance(target, ast.Attribute) and target.attr == "path" and \
                    isinstance(target.value, ast.Name) and target.value.id == "sys":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"sys.path edited in {offenders}"


def test_every_project_error_has_the_one_root():
    import calibration.data
    import calibration.quantize
    import export.build_engines
    import export.precision
    import llmformer.captioner
    import llmformer.checkpoint
    import llmformer.data.cocostuff
    import runtime
    import runtime.evaluate
    from engines.errors import LLMFormerError
    from engines.tensorrt_builder import TensorRTBuildError

    modules = [calibration.data, calibration.quantize, export.build_engines, export.precision, llmformer.captioner,
               llmformer.checkpoint, llmformer.data.cocostuff, runtime.evaluate]
    classes = {TensorRTBuildError} | {c for c in (getattr(runtime, n) for n in runtime.__all__) if inspect.isclass(c)}
    classes |= {c for m in modules for _, c in inspect.getmembers(m, inspect.isclass) if c.__module__ == m.__name__}
    errors = {c for c in classes if issubclass(c, BaseException)}
    assert len(errors) >= 15
    assert [c.__name__ for c in errors if not issubclass(c, LLMFormerError)] == []
    # ... and each keeps a builtin base that callers caught before there was a root.
    def builtin_base(c):
        return any(b.__module__ == "builtins" and b not in (Exception, BaseException, object) for b in c.__mro__)

    assert [c.__name__ for c in errors - {LLMFormerError} if not builtin_base(c)] == []


def test_runtime_exports_its_public_types():
    import runtime

    for name in ("Runtime", "Segmentation", "Priors", "Caption", "CaptionPolicy", "LLMFormerError", "EngineError",
                 "ManifestError", "FrameError", "RuntimeInputError", "CaptionError", "load", "visualize"):
        assert name in runtime.__all__ and hasattr(runtime, name), name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed (not editable) into a folder of its own: exactly what a wheel ships."""
    target = tmp_path_factory.mktemp("site")
    # With build isolation, as `.ci/run`'s own install: the interpreter's setuptools may predate the one
    # pyproject.toml asks for (a fresh 3.11 image has 65/66 and no bdist_wheel without `wheel`).
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-compile", "--target", str(target), str(ROOT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return target


def test_install_ships_only_our_packages(installed):
    top = {p.name for p in installed.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert top == PACKAGES
    assert (installed / "llmformer" / "weights" / "demo" / "segmenter.safetensors").is_file()


def test_users_own_models_and_data_packages_coexist(installed, tiny_artifacts, tmp_path):
    """From a folder holding a user's `models/`, `data/`, `train/` and `utils/`, the installed runtime loads
    and segments, and `import models` is still the user's."""
    work = tmp_path / "user_project"
    for name in ("models", "data", "train", "utils"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"OWNER = 'user:{name}'\n")
    code = f"""
import numpy as np, runtime, models, data, train, utils
assert runtime.__file__.startswith({str(installed)!r}), runtime.__file__
assert (models.OWNER, data.OWNER, train.OWNER, utils.OWNER) == ('user:models', 'user:data', 'user:train', 'user:utils')
rt = runtime.load({str(tiny_artifacts)!r})
seg = rt.segment(np.full((48, 64, 3), 120, np.uint8), vocabulary=['ball', 'box'], caption='a red ball on a box')
assert seg.labels.shape == (48, 64)
import sys  # (torch may be imported here by spaCy's thinc, which uses it where installed)
assert not [m for m in sys.modules if m.split('.')[0] in ('transformers', 'llmformer')]
print('ok')
"""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    res = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
