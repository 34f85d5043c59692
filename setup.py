"""Build hook: generate the gRPC/protobuf modules from protos/ on every build.

The generated package ``bkv_api`` is never committed; ``protos/`` is the source
of truth. It is generated before ``setup()`` runs, because setuptools discovers
packages before any build step: a wheel built from a clean tree must contain it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))

from gen_protos import generate  # noqa: E402  (needs scripts/ on the path)

generate(ROOT)
setup()
