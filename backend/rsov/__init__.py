"""rsov: open-vocabulary segmentation of remote-sensing rasters."""

__version__ = "0.1.0"
API_VERSION = 1  # of the HTTP/JSON contract with the plugin: raised on any incompatible change
