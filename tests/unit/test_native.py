"""stream/native.py: compiled modules are found, and a build older than its source refuses
to run; and the installed package runs setup.py's modules compiled."""

import ast
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from stream import native

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = EXTENSION_SUFFIXES[0]
NOW = 1_800_000_000.0


def make_package(tmp_path: Path, files: dict[str, float]) -> Path:
    """Files named as given (`../name` beside the package), with those modification times."""
    package = tmp_path / "stream"
    package.mkdir()
    for name, mtime in files.items():
        path = package / name
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    return package


@pytest.mark.parametrize(
    ("files", "compiled", "stale"),
    [
        ({"windows.py": NOW}, [], []),
        ({"windows.py": NOW, f"windows{SUFFIX}": NOW + 5}, ["windows"], []),
        ({"windows.py": NOW + 60, f"windows{SUFFIX}": NOW}, ["windows"], ["windows"]),
        # a wheel writes source and build within moments, in either order
        ({"windows.py": NOW + 1, f"windows{SUFFIX}": NOW}, ["windows"], []),
        # mypyc's shared library has no source beside it
        ({f"stream_native__mypyc{SUFFIX}": NOW}, [], []),
        # a rebuild rewrites the shared library (the code), not always the module's file
        (
            {
                "windows.py": NOW + 60,
                f"windows{SUFFIX}": NOW,
                f"../{native.GROUP_LIBRARY}{SUFFIX}": NOW + 90,
            },
            ["windows"],
            [],
        ),
        # ... and a library older than the source is stale like the module's file
        (
            {
                "windows.py": NOW + 60,
                f"windows{SUFFIX}": NOW,
                f"../{native.GROUP_LIBRARY}{SUFFIX}": NOW,
            },
            ["windows"],
            ["windows"],
        ),
        (
            {
                "lifecycle.py": NOW + 60,
                f"lifecycle{SUFFIX}": NOW,
                "customers.py": NOW,
                f"customers{SUFFIX}": NOW,
            },
            ["customers", "lifecycle"],
            ["lifecycle"],
        ),
    ],
)
def test_compiled_and_stale_modules(tmp_path, files, compiled, stale):
    package = make_package(tmp_path, files)
    assert list(native.compiled_sources(package)) == compiled
    assert native.stale_modules(package) == stale


def test_a_stale_build_refuses_to_run_and_says_how_to_fix_it(tmp_path):
    package = make_package(tmp_path, {"customers.py": NOW + 60, f"customers{SUFFIX}": NOW})
    with pytest.raises(native.StaleBuildError, match=r"stream/customers\.py .*make setup"):
        native.check_builds(package)


def test_a_current_build_runs(tmp_path):
    native.check_builds(make_package(tmp_path, {"customers.py": NOW, f"customers{SUFFIX}": NOW}))


def setup_py_modules() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "NATIVE_MODULES":
            return sorted(Path(path).stem for path in ast.literal_eval(node.value))
    raise AssertionError("setup.py has no NATIVE_MODULES")


@pytest.mark.skipif(
    os.environ.get("CHURN_PURE_PYTHON") == "1", reason="installed as pure Python on purpose"
)
def test_the_installed_package_runs_the_modules_setup_py_compiles():
    """A failed compile falls back to pure Python silently at install (the extensions are
    optional); here it fails the suite, so CI measures and tests what users run."""
    assert list(native.compiled_sources()) == setup_py_modules()
    assert native.stale_modules() == []


def test_the_shared_library_is_the_one_setup_py_builds():
    group = native.GROUP_LIBRARY.removesuffix("__mypyc")
    assert f'group_name="{group}"' in (ROOT / "setup.py").read_text()
