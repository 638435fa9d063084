"""Compiles the customer and segment stages' pure modules with mypyc (README, Native modules).

The modules stay plain Python, and compiling them is optional: with CHURN_PURE_PYTHON=1, or
where no C compiler is found, churn-stream installs as pure Python.
"""

import os

from setuptools import setup

NATIVE_MODULES = [
    "stream/windows.py",
    "stream/formulas.py",
    "stream/lifecycle.py",
    "stream/contributions.py",
    "stream/customers.py",
    "stream/decoding.py",
    "stream/routing.py",
    "stream/aggregation.py",
]


def native_extensions() -> list:
    if os.environ.get("CHURN_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    # Not pyproject's [tool.mypy]: its pydantic plugin is absent from the build environment.
    options = ["--config-file", os.devnull, "--ignore-missing-imports"]
    extensions = mypycify([*options, *NATIVE_MODULES], opt_level="3", group_name="stream_native")
    for extension in extensions:
        extension.optional = True  # a failed build leaves the pure Python modules
    return extensions


setup(ext_modules=native_extensions())
