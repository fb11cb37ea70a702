"""Builds the native parts (libtailproxy.so, the node library) into the package.

The wheel is platform-specific but not tied to a Python version or ABI (the libraries are
loaded with LD_PRELOAD and ctypes, not as extension modules): its tag is py3-none-PLATFORM,
which tools/build_wheel.py turns into manylinux_2_XX with auditwheel.

TAILPROXY_PREBUILT_NATIVE=DIR takes the native parts from DIR (e.g. the tree's
src/tailproxy/_native after `make native`) instead of building them again.
"""
import os
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
import build_native  # noqa: E402


class BuildPyWithNative(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        out = os.path.join(self.build_lib, "tailproxy", "_native")
        prebuilt = os.environ.get("TAILPROXY_PREBUILT_NATIVE")
        try:
            if prebuilt:
                build_native.copy_prebuilt(prebuilt, out)
            else:
                build_native.build(out)
        except build_native.BuildError as e:
            sys.exit(f"tailproxy: cannot build the native parts: {e}")
        except subprocess.CalledProcessError as e:
            sys.exit(f"tailproxy: building the native parts failed: {' '.join(map(str, e.cmd))} "
                     f"exited {e.returncode} (its output is above)")


class DistributionWithLibraries(Distribution):
    """Installs into platlib, as a package with extension modules does (auditwheel checks the
    ELF files there), though the libraries are loaded by LD_PRELOAD and ctypes."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for this platform (it carries ELF libraries) and any Python 3."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=DistributionWithLibraries,
      cmdclass={"build_py": BuildPyWithNative, "bdist_wheel": PlatformWheel})
