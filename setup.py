"""Builds extraction's compiled loops (filters/extract_speedups.pyx). The build is optional: without a C
compiler the install goes on, and the pure-Python originals of those functions run instead."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([Extension("filters.extract_speedups", ["filters/extract_speedups.pyx"], optional=True)]))
