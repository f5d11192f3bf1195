"""Geodata in and out: raster reading, polygons and vector files, previews, QGIS styles."""
