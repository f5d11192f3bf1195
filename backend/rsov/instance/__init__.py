"""Instance mode: SAM proposals, mask operations, classification and the example bank.

No raster or vector I/O here (that is ``rsov.geo``); ``rsov.engine`` composes it.
"""
