"""Run the atheris (libFuzzer) fuzzers: ``run.py --target NAME|all --runs N | --seconds S``.

Each target runs in its own process (libFuzzer exits the process when done),
starting from its committed seeds in ``corpus/<target>/``; new interesting
inputs go to a scratch directory, never into the committed corpus. An input
that raises anything the target does not document is a finding: libFuzzer
prints the traceback, writes the input as ``crash-*`` in ``--artifacts`` and
the process exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
MAX_INPUT_BYTES = 70_000  # room for a multi-chunk age file


def _fuzz_in_process(name: str, runs: int | None, seconds: float | None, artifacts: Path) -> None:
    """Fuzz one target, or with ``name == "all"`` every target in this one process.

    All-in-one is the quick CI budget: one start-up instead of one per target.
    The first byte of each input picks the target; the seeds are copied with
    their target's byte in front.
    """
    sys.path.insert(0, str(ROOT))
    import atheris  # the dev extra installs it; absent, the caller reports it

    with atheris.instrument_imports(include=["bkv_protocol", "client_sdk", "vault_node"]):
        from tests.fuzz.targets import TARGETS, run_one
    names = sorted(TARGETS) if name == "all" else [name]
    chosen = [TARGETS[n] for n in names]
    scratch = Path(tempfile.mkdtemp(prefix=f"bkv-fuzz-{name}-"))
    if name == "all":
        for i, target_name in enumerate(names):
            for seed in sorted((CORPUS / target_name).iterdir()):
                (scratch / f"{target_name}-{seed.name}").write_bytes(bytes([i]) + seed.read_bytes())
        seeds: list[str] = []

        def one_input(data: bytes) -> None:
            if data:
                run_one(chosen[data[0] % len(chosen)], data[1:])
    else:
        seeds = [str(CORPUS / name)]

        def one_input(data: bytes) -> None:
            run_one(chosen[0], data)

    argv = [sys.argv[0], f"-max_len={MAX_INPUT_BYTES}", f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1", str(scratch), *seeds]
    if runs is not None:
        argv.insert(1, f"-runs={runs}")
    if seconds is not None:
        argv.insert(1, f"-max_total_time={max(1, int(seconds))}")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()  # never returns: libFuzzer exits 0, or non-zero on a finding


def _spawn(name: str, args: argparse.Namespace) -> int:
    command = [sys.executable, __file__, "--target", name, "--in-process",
               "--artifacts", str(args.artifacts)]
    if args.runs is not None:
        command += ["--runs", str(args.runs)]
    if args.seconds is not None:
        command += ["--seconds", str(args.seconds)]
    limit = (args.seconds or 0) + 120  # startup and instrumentation on a busy machine
    started = time.monotonic()
    try:
        code = subprocess.run(command, cwd=ROOT, timeout=limit if args.seconds else None,
                              check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"fuzz {name}: did not finish within {limit:g}s", file=sys.stderr)
        return 1
    print(f"fuzz {name}: exit {code} after {time.monotonic() - started:.1f}s", file=sys.stderr)
    return code


def _target_names() -> list[str]:
    """The targets, from the corpus folders (importing the targets here would import the
    code under test before atheris can instrument it)."""
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, choices=[*_target_names(), "all"])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--runs", type=int, help="inputs per target")
    budget.add_argument("--seconds", type=float, help="time per target")
    parser.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()),
                        help="where libFuzzer writes crash-* inputs")
    parser.add_argument("--together", action="store_true",
                        help="with --target all: one process fuzzes every target (quick runs)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    if args.in_process:
        _fuzz_in_process(args.target, args.runs, args.seconds, args.artifacts)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris): nothing fuzzed", file=sys.stderr)
        return 2
    names = [args.target] if args.together or args.target != "all" else _target_names()
    failed = [name for name in names if _spawn(name, args) != 0]
    if failed:
        print(f"fuzz findings or failures in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    sys.exit(main())
