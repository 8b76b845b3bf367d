"""dir: degradation-independent representations for camera-ISP pipelines (DiR, after Guo, Luo & Wu, CVPR 2024).

Public API: :class:`dir.model.DiRNet`, :func:`dir.model.build_dirnet`, :func:`dir.checkpoint.load_dirnet`;
training ``python -m dir train --stage mmi|dfr|align|restore|plain|all --config ...``; evaluation
``python -m dir evaluate --config ...``. See dir/README.md.
"""
from .checkpoint import DiRCheckpointError, load_dirnet
from .model import DiRInputError, DiRNet, build_dirnet

__all__ = ["DiRNet", "build_dirnet", "load_dirnet", "DiRInputError", "DiRCheckpointError"]
