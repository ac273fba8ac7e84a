"""ablate: benchmarking and ablation studies for nnU-Net-style 3D segmentation."""

__version__ = "0.1.0"
