"""Loading, preprocessing and splitting image data."""

from .assets import demo_sample_path
from .images import ImageSet
from .loading import list_splits, load_defender_images, load_images
from .preprocess import PREPROCESS_KEY, Preprocess, fit_preprocess
from .splits import defender_split, holdout_split

__all__ = [
    "ImageSet",
    "PREPROCESS_KEY",
    "Preprocess",
    "defender_split",
    "demo_sample_path",
    "fit_preprocess",
    "holdout_split",
    "list_splits",
    "load_defender_images",
    "load_images",
]
