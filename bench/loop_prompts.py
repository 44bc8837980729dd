"""The questions of `lorabot bench loop`: one set the rater rates for training, one held out for the A/B.

Every question is a template filled with a subject. The two sets share the templates and no subject,
so the A/B asks about things the candidate never saw rated. The templates mix ones the embedded model
usually answers in prose ("Tell me about …") with ones it often answers with a list ("Give me a few
tips about …") and ones it often answers briefly ("Summarize … for me."), so each shipped rater
(bench/raters.py) likes some of the model's answers from the start: a preference the model never
shows gives the learner nothing to reinforce.
"""

from __future__ import annotations

import random

TEMPLATES = (
    "Tell me about {x}.",
    "Explain {x} to me.",
    "Summarize {x} for me.",
    "Why is {x} interesting?",
    "What are the basics of {x}?",
    "What are some key facts about {x}?",
    "Give me a few tips about {x}.",
    "What are the main points about {x}?",
)

TRAIN_SUBJECTS = (
    "volcanoes", "the moon", "honey bees", "rainbows", "bread", "coffee", "the internet", "batteries",
    "sleep", "exercise", "recycling", "chess", "the piano", "gravity", "clouds", "tides", "earthquakes",
    "dinosaurs", "the ocean", "penguins", "trees", "electricity", "magnets", "the human heart",
    "bicycles", "airplanes", "trains", "the printing press", "cheese", "tea", "owls", "whales",
    "deserts", "glaciers", "rivers", "mountains", "the sun", "stars", "comets", "robots", "computers",
    "smartphones", "email", "passwords", "money", "banks", "taxes", "maps", "compasses", "clocks",
    "calendars", "music", "painting", "poetry", "football", "swimming", "running", "yoga", "gardening",
    "tomatoes", "potatoes", "rice", "chocolate", "vitamins", "water", "salt", "soap", "fire", "wind",
    "snow",
)  # fmt: skip

HELDOUT_SUBJECTS = (
    "lightning", "frogs", "ants", "spiders", "sharks", "elephants", "horses", "cats", "dogs",
    "libraries", "museums", "castles", "bridges", "roads", "rockets", "satellites", "telescopes",
    "microscopes", "bacteria", "viruses", "the brain", "memory", "friendship", "kindness", "habits",
    "budgets", "cooking pasta", "baking cookies", "camping", "fishing", "knitting", "photography",
    "public speaking", "job interviews", "learning guitar", "saving money", "writing essays",
    "time management",
)  # fmt: skip


def _questions(subjects: tuple[str, ...], seed: int) -> list[str]:
    questions = [template.format(x=subject) for subject in subjects for template in TEMPLATES]
    random.Random(seed).shuffle(questions)
    return questions


def train_questions(seed: int = 1) -> list[str]:
    """The questions whose answers are rated for training (560), in a fixed shuffled order."""
    return _questions(TRAIN_SUBJECTS, seed)


def heldout_questions(seed: int = 2) -> list[str]:
    """The A/B's questions (304): subjects never in `train_questions`."""
    return _questions(HELDOUT_SUBJECTS, seed)
