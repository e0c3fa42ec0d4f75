"""A small procedurally generated visual world of coloured shapes, with exact captions.

Torch-free (numpy and Pillow): the micro CLIP is trained on these scenes (``export/micro``), and
the demo, the indexer tests and the semantic end-to-end tests index and query them.

- :mod:`~mediasearch.scenes.vocab`: attribute values, :class:`SceneLabel`, :class:`SceneQuery`.
- :mod:`~mediasearch.scenes.render`: sample a label, draw it with nuisance variation.
- :mod:`~mediasearch.scenes.captions`: label or query -> English phrase.
- :mod:`~mediasearch.scenes.query`: phrase -> attributes; does a label satisfy a query.
- :mod:`~mediasearch.scenes.gallery`: write and read folders of scenes with JSON sidecars.
"""

from mediasearch.scenes.captions import caption, caption_attributes, caption_words, describe
from mediasearch.scenes.gallery import (
    GalleryItem,
    encode_scene,
    read_gallery,
    scene_rng,
    write_gallery,
)
from mediasearch.scenes.query import label_matches, parse_query
from mediasearch.scenes.render import render_label, render_scene, sample_label
from mediasearch.scenes.vocab import (
    ATTRIBUTE_VALUES,
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    HELD_OUT_COMBOS,
    POSITIONS,
    SHAPES,
    SIZES,
    SceneLabel,
    SceneQuery,
)

__all__ = [
    "ATTRIBUTE_VALUES",
    "BACKGROUNDS",
    "COLOURS",
    "COUNTS",
    "HELD_OUT_COMBOS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "GalleryItem",
    "SceneLabel",
    "SceneQuery",
    "caption",
    "caption_attributes",
    "caption_words",
    "describe",
    "encode_scene",
    "label_matches",
    "parse_query",
    "read_gallery",
    "render_label",
    "render_scene",
    "sample_label",
    "scene_rng",
    "write_gallery",
]
