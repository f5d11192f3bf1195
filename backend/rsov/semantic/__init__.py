"""Dense open-vocabulary segmentation: CLIP encoder, upsampler, text, vocabulary, predictor.

No raster or vector I/O here (that is ``rsov.geo``); ``rsov.engine`` composes it.
"""
