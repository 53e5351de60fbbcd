"""Entry points that let a benchmark module run on its own (``python -m sde_diffusion.bench.NAME``) as well as
under ``sde-diffusion bench NAME`` (``build_parser, main = entry_points(add_arguments, run, __doc__, prog)``), the
thread-count guard their ``run`` functions share, the machine description every report records and the JSON
cleaning of NaN/Inf."""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple


def entry_points(add_arguments: Callable, run: Callable, doc: str, prog: str) -> Tuple[Callable, Callable]:
    """``build_parser(prog)`` (the module's flags, its docstring's first paragraph as description) and
    ``main(argv, prog) -> 0``, which parses ``argv`` and calls ``run(args, command)``."""

    def build_parser(prog: str = prog) -> argparse.ArgumentParser:
        return add_arguments(argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0]))

    def main(argv: Optional[List[str]] = None, prog: str = prog) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        run(build_parser(prog).parse_args(argv), " ".join([prog] + argv))
        return 0

    return build_parser, main


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a benchmark on ``threads`` torch CPU threads, restoring the previous count afterwards."""
    import torch

    from .._checks import positive_int

    before = torch.get_num_threads()
    torch.set_num_threads(positive_int(threads, "--threads"))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine() -> str:
    """One line naming the OS, CPU, core count, load average at start and Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at start"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU(s){load}, Python {platform.python_version()}"


def jsonable(obj):
    """``obj`` with non-finite floats replaced by None (JSON has no NaN/Inf), through dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
