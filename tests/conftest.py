import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import pytest
import torch

from explorer.adapters import load_embedded

torch.set_num_threads(1)  # tiny model on a shared 2-core machine: avoid oversubscription


@pytest.fixture(scope="session")
def denoiser():
    return load_embedded()
