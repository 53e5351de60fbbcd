"""Shared test set-up."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the helper modules (_solvers, _sampler_reference) import by name


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run every test module on one intra-op thread, then restore the setting.

    The tests make thousands of tiny tensor operations (exact GMM scores on small batches); on a shared
    2-core machine torch's thread pool spins against other processes and makes them 3–10× slower
    (a (64, 1) softmax: ~15 ms instead of ~3 µs).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
