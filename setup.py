"""Builds the compiled loops of extraction (filters/extract_speedups.pyx) and of Gopher repetition's n-gram
measures (filters/ngram_speedups.pyx). The build is optional: without a C compiler the install goes on, and
the pure-Python originals of those functions run instead."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([Extension(f"filters.{name}", [f"filters/{name}.pyx"], optional=True)
                             for name in ("extract_speedups", "ngram_speedups")]))
