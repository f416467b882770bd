"""Only here to hand the cffi build script to setuptools; metadata is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["catzilla_mp/native/build_native.py:ffibuilder"])
