"""Distinct, realistic text-to-image search queries of varied length, from templates (seeded)."""

from __future__ import annotations

import random

SUBJECTS = [
    "dog",
    "cat",
    "horse",
    "red car",
    "old bicycle",
    "wooden boat",
    "little girl",
    "old man",
    "woman",
    "group of friends",
    "family",
    "chef",
    "soldier",
    "astronaut",
    "coffee cup",
    "birthday cake",
    "mountain",
    "lighthouse",
    "bridge",
    "castle",
    "forest",
    "waterfall",
    "city skyline",
    "street market",
    "train",
    "airplane",
    "rocket",
    "sunflower field",
    "snowman",
    "surfer",
    "skateboarder",
    "bride",
]
ADJECTIVES = ["", "", "small", "big", "happy", "black and white", "colorful", "vintage", "wet", "sleepy"]
ACTIONS = [
    "",
    "running",
    "sleeping",
    "jumping",
    "smiling at the camera",
    "eating ice cream",
    "reading a book",
    "playing in the snow",
    "crossing the street",
    "waiting for the bus",
    "dancing",
    "taking a selfie",
]
PLACES = [
    "",
    "on the beach",
    "in a park",
    "in the kitchen",
    "at night",
    "in the rain",
    "on a busy street in tokyo",
    "next to a lake",
    "in the desert",
    "on top of a hill",
    "inside an old church",
    "at a wedding",
]
EXTRAS = [
    "",
    "",
    "",
    "at sunset",
    "in winter",
    "with a blue sky and a few clouds in the background",
    "shot on film",
    "aerial view",
    "close up",
    "in the style of an oil painting",
    "high resolution photo",
]
SHORT = ["sunset", "beach", "cats", "snow", "birthday party", "new york", "wedding dress", "latte art"]


def make_queries(n: int = 500, seed: int = 0) -> list[str]:
    """``n`` distinct queries: a few one-word searches, mostly phrases of 3 to 25 words."""
    rng = random.Random(seed)
    seen: dict[str, None] = dict.fromkeys(SHORT)
    while len(seen) < n:
        words = [rng.choice(["", "a", "a photo of a", "picture of a", "an image of a"])]
        words += [rng.choice(ADJECTIVES), rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)]
        words.append(rng.choice(EXTRAS))
        query = " ".join(w for w in words if w)
        seen.setdefault(query, None)
    queries = list(seen)[:n]
    rng.shuffle(queries)
    return queries
