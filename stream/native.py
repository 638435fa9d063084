"""Which of the package's modules run compiled by mypyc (setup.py), and whether those
builds still match their source. No I/O beyond listing the package directory.

A compiled module sits next to its source and Python imports it in preference to the
source, so an edit or a checkout made after the build would otherwise be silently ignored.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Final

PACKAGE_DIR: Final = Path(__file__).resolve().parent
# The shared library holding every compiled module's code (setup.py's group_name +
# "__mypyc"), beside the package. A rebuild rewrites it, but may leave the modules' own
# small files untouched (their C does not change), with their first build's time.
GROUP_LIBRARY: Final = "stream_native__mypyc"
# An installed wheel writes a module's source and its build within moments of each other.
MTIME_TOLERANCE_S: Final = 2.0


def compiled_sources(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name -> its compiled file, for every module with one beside its source."""
    found: dict[str, Path] = {}
    for suffix in EXTENSION_SUFFIXES:
        for compiled in package_dir.glob(f"*{suffix}"):
            name = compiled.name[: -len(suffix)]
            if (package_dir / f"{name}.py").exists():
                found[name] = compiled
    return dict(sorted(found.items()))


def _library_built_at(package_dir: Path) -> float | None:
    times = [
        library.stat().st_mtime
        for suffix in EXTENSION_SUFFIXES
        if (library := package_dir.parent / f"{GROUP_LIBRARY}{suffix}").exists()
    ]
    return max(times, default=None)


def stale_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The compiled modules whose source changed after they were built."""
    library = _library_built_at(package_dir)
    stale = []
    for name, compiled in compiled_sources(package_dir).items():
        built_at = max(compiled.stat().st_mtime, library or 0.0)
        if (package_dir / f"{name}.py").stat().st_mtime > built_at + MTIME_TOLERANCE_S:
            stale.append(name)
    return stale


class StaleBuildError(ImportError):
    pass


def check_builds(package_dir: Path = PACKAGE_DIR) -> None:
    """Refuse to run compiled code that no longer matches its source."""
    stale = stale_modules(package_dir)
    if stale:
        names = ", ".join(f"stream/{name}.py" for name in stale)
        raise StaleBuildError(
            f"{names} changed after being compiled with mypyc, and Python would run the old "
            "build: run `make setup` to compile again, or `make pure` to remove the builds "
            "(README, Native modules)"
        )
