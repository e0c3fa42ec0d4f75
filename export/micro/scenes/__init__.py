"""A small procedurally generated visual world of coloured shapes, with exact captions.

Torch-free (numpy and Pillow): the micro CLIP is trained on these scenes (``export/micro``), and
the demo, the indexer tests and the semantic end-to-end tests index and query them.

- :mod:`~mediasearch.export.micro.scenes.vocab`: attribute values, :class:`SceneLabel`, :class:`SceneQuery`.
- :mod:`~mediasearch.export.micro.scenes.render`: sample a label, draw it with nuisance variation.
- :mod:`~mediasearch.export.micro.scenes.captions`: label or query -> English phrase.
- :mod:`~mediasearch.export.micro.scenes.matching`: phrase -> attributes; does a label satisfy a query.
- :mod:`~mediasearch.export.micro.scenes.gallery`: write and read folders of scenes with JSON sidecars.
"""

from mediasearch.export.micro.scenes.captions import caption, caption_attributes, caption_words, describe
from mediasearch.export.micro.scenes.gallery import (
    GalleryItem,
    encode_scene,
    read_gallery,
    scene_rng,
    write_gallery,
)
from mediasearch.export.micro.scenes.matching import label_matches, parse_query
from mediasearch.export.micro.scenes.render import render_label, render_scene, sample_label
from mediasearch.export.micro.scenes.vocab import (
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
