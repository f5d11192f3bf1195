# SPDX-License-Identifier: GPL-2.0-or-later
"""Names shared by the backend's result layer and the plugin's review fields."""

LAYER = "rsov"  # the GeoPackage layer the backend writes
CLASS = "class"
CLASS_ID = "class_id"
SCORE = "score"
AREA = "area_m2"
INSTANCE_ID = "instance_id"  # instance results only: one feature per object
STATUS = "status"  # added by the plugin
MERGED = "merged_into"  # added by the plugin's first merge: the targets a feature was merged into (JSON list)

NEW, ACCEPTED, REJECTED = "new", "accepted", "rejected"
STATUSES = (NEW, ACCEPTED, REJECTED)
