"""A minimal nnU-Net v2 plans dict for the differential tests that hand nnU-Net's own functions
a plan (PlansManager reads only the keys each function needs)."""

from __future__ import annotations


def nnunet_plans(
    fullres: dict | None = None, transpose_forward=(0, 1, 2), transpose_backward=(0, 1, 2), **top
) -> dict:
    """Plans with the 3d_fullres configuration `fullres` (none when None); `top` adds or
    replaces top-level keys."""
    plans = {
        "dataset_name": "Dataset999_Test",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward),
        "transpose_backward": list(transpose_backward),
        "configurations": {} if fullres is None else {"3d_fullres": fullres},
        "foreground_intensity_properties_per_channel": {},
    }
    plans.update(top)
    return plans
