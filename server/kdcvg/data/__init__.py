"""Procedurally generated ad creatives: the project's own training and sample-knowledge-base data."""

from kdcvg.data.creatives import (
    BACKGROUNDS,
    CATEGORIES,
    COLORS,
    MOTION_VERBS,
    MOTIONS,
    OVERLAYS,
    PRODUCTS,
    SHAPES,
    Background,
    Creative,
    CreativeSpec,
    describe,
    iter_creatives,
    make_creative,
    render,
    sample_spec,
)

__all__ = [
    "BACKGROUNDS",
    "CATEGORIES",
    "COLORS",
    "MOTIONS",
    "MOTION_VERBS",
    "OVERLAYS",
    "PRODUCTS",
    "SHAPES",
    "Background",
    "Creative",
    "CreativeSpec",
    "describe",
    "iter_creatives",
    "make_creative",
    "render",
    "sample_spec",
]
