"""Test-wide setup: nnU-Net v2 (the test oracle) reads its folders from environment variables when
imported; point them at an empty temporary folder so no test touches a user's nnU-Net data."""

import os
import tempfile
from pathlib import Path

_NNUNET_ROOT = Path(tempfile.mkdtemp(prefix="ablate-nnunet-"))
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_name] = str(_NNUNET_ROOT / _name)
    (_NNUNET_ROOT / _name).mkdir(exist_ok=True)

# nnU-Net lists a dataset's files in a forked multiprocessing Pool (planner, integrity check).
# A fork deadlocks once earlier tests have left threads running in this process (Ray, MLflow),
# so the oracle's file listing runs in threads during the tests.
from multiprocessing.pool import ThreadPool  # noqa: E402

from nnunetv2.utilities import utils as _nnunet_utils  # noqa: E402

_nnunet_utils.Pool = ThreadPool


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (every module's executor tests share it: a
    second ray.init in the same process fails)."""
    ray = pytest.importorskip("ray", reason="ray not installed (pip install ray)")
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 2**20,
    )
    yield
    ray.shutdown()
