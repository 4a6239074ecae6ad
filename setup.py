# Only here to carry cffi_modules; all other metadata lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["uring_backend/_build.py:ffibuilder"])
