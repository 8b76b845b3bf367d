"""PyNET learned ISP (Ignatov, Van Gool, Timofte, CVPRW 2020): packed Bayer RAW -> sRGB.

Modules:
- :mod:`pynet.model`: :class:`PyNET` (``variant="pytorch"`` = authors' PyTorch release, loads its checkpoint;
  ``"paper"`` = paper/TF release), :func:`load_official_checkpoint`, :func:`load_pynet`.
- :mod:`pynet.losses`: MSE, (MS-)SSIM, VGG-19 perceptual loss from a local weights file, per-level losses.
- :mod:`pynet.data`: Zurich RAW-to-RGB datasets, packing/normalisation, synthetic pairs by unprocessing.
- :mod:`pynet.train`: level-wise training (5 -> 0) from YAML configs, resumable.
- :mod:`pynet.infer`: whole-frame, blended-tile and exact tiled inference.
- :mod:`pynet.isp_stage`: :class:`PyNETISP`, a learned-ISP stage for isp_sim (linear RAW -> sRGB, any Bayer pattern).
- :mod:`pynet.convert`: the TF release's checkpoint (or its ``.npz`` export) -> a paper-variant checkpoint.

CLI: ``python -m pynet train --config configs/pynet/tiny_cpu.yaml``,
``python -m pynet infer RAW... --checkpoint CK --out DIR``, ``python -m pynet convert-tf SRC --out DST``.
"""
from .model import PyNET, load_official_checkpoint, load_pynet  # noqa: F401

__all__ = ["PyNET", "load_official_checkpoint", "load_pynet"]
