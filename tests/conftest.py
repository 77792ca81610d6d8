import os
from pathlib import Path

import pytest
import torch

# Tests read data from ODERNN_DATA; default to the shared data folder beside the checkout.
_default = Path(__file__).resolve().parents[2] / "shared" / "data"
if "ODERNN_DATA" not in os.environ and _default.is_dir():
    os.environ["ODERNN_DATA"] = str(_default)


# Recipes compile their solver loop by default ("--compile auto"); compiling costs 10-90 s per model here, so the
# suite runs recipes eagerly unless a test asks for compiling ("--compile on" or Solver(compile=True)).
os.environ.setdefault("ODERNN_COMPILE", "off")

# The suite's tensors are tiny: intra-op threads only add synchronisation (and oversubscribe a shared CI machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
