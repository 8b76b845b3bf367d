import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ISP_SHARED_DIR", REPO.parent / "shared"))
REAL_RAW = SHARED / "data" / "real_raw"
COCO_TINY = SHARED / "data" / "coco_tiny"

torch.set_num_threads(min(2, torch.get_num_threads()))


def need_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared test data not found at {path}")


@pytest.fixture(scope="session")
def photos():
    """Real photographs shipped with scikit-image, as float (B, 3, 128, 128) tensors in [0, 1]."""
    from skimage import data

    out = []
    for n in ("astronaut", "coffee", "chelsea", "rocket"):
        im = getattr(data, n)()
        h, w = im.shape[:2]
        y, x = (h - 128) // 2, (w - 128) // 2
        out.append(torch.from_numpy(im[y:y + 128, x:x + 128].astype(np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out)


def psnr(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: on a small shared CPU several threads mostly spin and cost far more CPU
    time (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
