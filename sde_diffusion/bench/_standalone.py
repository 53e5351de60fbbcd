"""Entry points that let a benchmark module run on its own (``python -m sde_diffusion.bench.NAME``) as well as
under ``sde-diffusion bench NAME`` (``build_parser, main = entry_points(add_arguments, run, __doc__, prog)``), and
the thread-count guard their ``run`` functions share."""
from __future__ import annotations

import argparse
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
