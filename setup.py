"""Build hook: generate the gRPC/protobuf modules from protos/ on every build.

The generated package ``bkv_api`` is never committed; ``protos/`` is the source of truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).parent / "scripts"))


class BuildWithProtos(build_py):
    def run(self) -> None:
        from gen_protos import generate

        generate(Path(__file__).parent)
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
