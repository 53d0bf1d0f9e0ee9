"""Model zoos: a config of clean and backdoored models per dataset, built resumably into ONNX files
plus a manifest (``audit zoo build``)."""

from .build import build_zoo, read_manifest
from .config import ZooEntry, load_config

__all__ = ["ZooEntry", "build_zoo", "load_config", "read_manifest"]
