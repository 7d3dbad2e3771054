"""Builds the optional compiled fast path; everything else is in pyproject.toml.

Without Cython or a C compiler the build goes on and udpchat runs the same loops in Python
(``udpchat.fastpath``), so an install never fails for want of a compiler.
"""

from __future__ import annotations

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; say once what could not, and carry on."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # no compiler at all
            print(f"udpchat: fast path not compiled ({error}); using pure Python")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # a compiler that failed
            print(f"udpchat: {ext.name} not compiled ({error}); using pure Python")


try:
    from Cython.Build import cythonize
except ImportError:
    extensions = []
else:
    extensions = cythonize(
        [Extension("udpchat._fastpath", ["udpchat/_fastpath.pyx"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
