"""Builds the `tern` package: the tern.v1 modules are generated from tern's proto/ at
build time (generate_stubs.py), never taken from the source tree.

proto/ is found at ../../proto (this directory inside tern's repository) or at
$TERN_PROTO_DIR. Metadata lives in pyproject.toml.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    """build_py that first writes tern/v1/*.py into the build directory."""

    def run(self):
        sys.path.insert(0, HERE)
        import generate_stubs
        proto_dir = os.environ.get("TERN_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
        try:
            generate_stubs.generate(proto_dir, self.build_lib)
        except generate_stubs.StubError as e:
            raise SystemExit(f"tern: {e} (set TERN_PROTO_DIR to tern's proto/ directory)")
        super().run()

    def find_package_modules(self, package, package_dir):
        if package == "tern.v1":  # generated into build_lib by run(), not in the sources
            return []
        return super().find_package_modules(package, package_dir)


setup(cmdclass={"build_py": BuildWithStubs})
