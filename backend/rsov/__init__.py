"""rsov: open-vocabulary segmentation of remote-sensing rasters."""

__version__ = "0.1.0"
