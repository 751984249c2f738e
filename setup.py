"""Build the compiled hot loops in ext/ as modules of the package ``edge_agent._native``.

Everything else about the package lives in pyproject.toml. The generated C is never
committed: Cython runs at build time. Optimisation is on (-O3); we do not use
-march=native so that a wheel built on one Pi runs on another of the same architecture.
"""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE_MODULES = ["time_domain", "spectral", "quality", "frames"]

# -O3 plus the floating-point freedoms that let GCC vectorise sums (reassociation) and call
# sqrt without errno checks. Deliberately NOT -ffast-math: -ffinite-math-only would let the
# compiler assume no NaN/Inf, and NaN must propagate (the data-quality checks rely on it).
# -fno-strict-aliasing: time_domain and quality read a float32 window's bits as int32 (order-
# preserving integer compares for max/min; quality makes all its comparisons that way).
COMPILE_ARGS = [
    "-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
    "-fno-strict-aliasing",
]

extensions = [
    Extension(
        f"edge_agent._native.{name}",
        [f"ext/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )
    for name in NATIVE_MODULES
]

# ext/change.pyx (drift detectors) rounds exactly as River's does (tests/test_change_detect.py
# compares detections index for index): no reassociation, and no fused multiply-add (GCC
# fuses by default on ARM). Its loops are scalar recurrences, so nothing is lost.
extensions.append(
    Extension(
        "edge_agent._native.change",
        ["ext/change.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-fno-math-errno", "-ffp-contract=off"],
    )
)

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
