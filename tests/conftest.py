"""Test-wide setup: nnU-Net v2 (the test oracle) reads its folders from environment variables when
imported; point them at an empty temporary folder so no test touches a user's nnU-Net data."""

import os
import tempfile
from pathlib import Path

_NNUNET_ROOT = Path(tempfile.mkdtemp(prefix="ablate-nnunet-"))
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_name] = str(_NNUNET_ROOT / _name)
    (_NNUNET_ROOT / _name).mkdir(exist_ok=True)
