"""Builds the optional native kernel of the weight-scoring pass (everything else is in pyproject.toml).

``moeprune.scoring._moments`` is plain C against the CPython API. Where it cannot be compiled (no C
compiler, no Python headers) the build goes on without it and the scoring pass uses numpy.
"""

import sys

from setuptools import Extension, setup

unix = sys.platform != "win32"
setup(
    ext_modules=[
        Extension(
            "moeprune.scoring._moments",
            ["src/moeprune/scoring/_moments.c"],
            # -O3 vectorizes the reduction loops, -fopenmp-simd lets them keep one partial sum per
            # vector lane (the loops marked `omp simd` only; no OpenMP runtime); no fast-math: the
            # sums stay IEEE, infinities and NaNs kept; fp-contract lets acc + w * w become one FMA,
            # which changes nothing since w * w is exact
            extra_compile_args=["-O3", "-fopenmp-simd", "-fno-fast-math", "-ffp-contract=fast"] if unix else [],
            optional=True,
        )
    ]
)
