"""Names the CLI offers, free of torch so that `qsenn --help` answers at once.

The registries in model.py and data/layouts.py are keyed by exactly these names (tested).
"""
DATASETS = ("synth", "CUB2011", "TravelingBirds", "StanfordCars", "ImageNet", "folder", "fashion-mnist")
ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50")
MODEL_TYPES = ("qsenn", "sldd")
