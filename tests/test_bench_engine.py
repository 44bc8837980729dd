"""`lorabot bench engine`'s scenario against llama-server: what each round asks."""

from __future__ import annotations

from bench.engine import QUESTIONS, ROUND_OPENINGS, round_question


def test_round_zero_asks_the_plain_questions():
    assert [round_question(0, i) for i in range(len(QUESTIONS))] == QUESTIONS


def test_every_round_opens_its_questions_differently():
    """Turn 1 of each round is a burst of prompts neither side has read before: no question of a
    round shares its opening with the same question in another round (else a slot already holding
    it answers from cache and the "burst" measures a cache hit)."""
    rounds = 2 * len(ROUND_OPENINGS) + 1
    for index in range(len(QUESTIONS)):
        asked = [round_question(r, index) for r in range(rounds)]
        assert len(set(asked)) == rounds
        openings = {question[:12] for question in asked}
        assert len(openings) == rounds, asked
