import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # zoo.py and friends
sys.path.insert(1, os.path.dirname(os.path.dirname(__file__)))  # the checkout: benchmarks/
torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to a busy second core
warnings.filterwarnings("ignore", message=".*index_reduce.*")


@pytest.fixture
def data_dir():
    """The shared data folder from $FORCEPRUNE_DATA, or skip the test with a reason."""
    root = os.environ.get("FORCEPRUNE_DATA")
    if not root or not os.path.isdir(root):
        pytest.skip("FORCEPRUNE_DATA is not set to a data folder (CI sets it to ../shared/data)")
    return root
