"""tasks: DiR (and ResNet) backbones for Faster / Mask R-CNN, COCO-format and procedural datasets, training.

Modules: ``backbones`` (build_detector, DetectorConfig), ``data.coco`` (CocoDetection), ``data.procedural``
(make_dataset), ``coco_eval`` (predict, evaluate_coco), ``checkpoint`` (load_detector), ``train``, ``config``,
``detectron2_backbone`` (imported only on demand; needs detectron2). CLI: ``python -m tasks --help``.
"""
