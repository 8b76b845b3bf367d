"""Datasets for detection / instance segmentation: COCO-format files and the embedded procedural dataset."""
