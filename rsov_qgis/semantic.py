# SPDX-License-Identifier: GPL-2.0-or-later
"""Semantic mode's option as the panel and Processing show it: one text for both."""

from __future__ import annotations

REFINE = (
    "Refine with SAM regions",
    "Semantic mode: clean the class map with Segment Anything's automatic regions (the class "
    "probabilities are averaged inside each region, so that class edges follow object edges). "
    "Costs a Segment Anything pass per 1024 px tile",
)
