"""evaluate: robustness of detectors to camera-ISP degradations and to real camera pipelines.

* :mod:`evaluate.metrics` - COCO box/mask AP (pycocotools via :mod:`tasks.coco_eval`), P / mPC / rPC
  (Michaelis et al. 2019), per-degradation / per-severity / seen-unseen summaries, restoration PSNR/SSIM.
* :mod:`evaluate.conditions` - degradation specs, severities, the grid of conditions and their split.
* :mod:`evaluate.grid` - the resumable robustness grid (``python -m evaluate run``).
* :mod:`evaluate.real_camera` - LibRaw / simulator-ISP / PyNET renderings of real and synthetic RAWs; the
  label-free consistency score.
* :mod:`evaluate.report` - Markdown, plots, sample grids, ``python -m evaluate compare``.
* :mod:`evaluate.demo` - ``python -m evaluate demo``: the end-to-end main job on the embedded data.
"""
