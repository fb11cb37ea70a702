"""Builds the native parts (libtailproxy.so, the pinned tailscaled) into the package."""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
import build_native  # noqa: E402


class BuildPyWithNative(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            build_native.build(os.path.join(self.build_lib, "tailproxy", "_native"))


setup(cmdclass={"build_py": BuildPyWithNative})
