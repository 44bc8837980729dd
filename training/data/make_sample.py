"""Write the sample ShareGPT dataset shipped with lorabot (train.jsonl + heldout.jsonl).

Written for the project, from templates, deterministically (seeded), so anyone can regenerate
it: `python -m training.data.make_sample`. Small and short on purpose: the `tiny` preset must
tune the 135M model on a CPU in a minute, and the held-out split must show the loss falling.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

Turn = tuple[str, str]  # (user text, assistant text)
HERE = Path(__file__).parent
SEED = 3407
HELDOUT = 60
TOTAL = 480  # conversations written, held-out ones included

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Brazil": "Brasília",
    "Argentina": "Buenos Aires",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "India": "New Delhi",
    "China": "Beijing",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Mexico": "Mexico City",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Hungary": "Budapest",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Morocco": "Rabat",
    "New Zealand": "Wellington",
    "South Korea": "Seoul",
    "Netherlands": "Amsterdam",
}

TERMS = {
    "a variable": "a name that refers to a value, so a program can store it and use it again later",
    "a function": "a named block of code that takes inputs, does one job and can return a result",
    "a loop": "a piece of code that repeats its body, for each item of a list or while a condition holds",
    "recursion": "a function solving a problem by calling itself on a smaller version of the same problem",
    "an API": "a set of rules that lets one program ask another for data or actions",
    "a database": "an organised store of data that programs can query and update safely",
    "a compiler": "a program that translates source code into machine code before it runs",
    "an interpreter": "a program that reads source code and runs it directly, line by line",
    "version control": "a system, like Git, that records every change to files "
    "so you can review or undo them",
    "a unit test": "a small automated check that one piece of code behaves as expected",
    "a bug": "a mistake in a program that makes it behave differently from what was intended",
    "JSON": "a plain-text format for structured data made of objects, lists, strings, numbers and booleans",
    "a hash table": "a data structure that maps keys to values with fast lookups, "
    "on average in constant time",
    "a queue": "a first-in, first-out collection: items leave in the order they arrived",
    "a stack": "a last-in, first-out collection: the item added last is the first one removed",
    "an operating system": "the software that manages a computer's hardware and runs other programs",
    "a neural network": "a model made of layers of simple units whose weights are learned from examples",
    "fine-tuning": "training an already trained model a little more, on data for a specific task",
    "LoRA": "a way to fine-tune a large model by learning small low-rank updates instead of all its weights",
    "quantization": "storing a model's weights with fewer bits, so it uses less memory and runs faster",
    "a token": "a small piece of text, often part of a word, that a language model reads and writes",
    "a GPU": "a processor with thousands of small cores, good at the parallel maths used in graphics and AI",
    "latency": "the delay between asking for something and getting the first response",
    "an algorithm": "a precise, step-by-step procedure for solving a problem",
    "open source": "software whose source code anyone may read, change and share under its licence",
}

OPPOSITES = {
    "hot": "cold",
    "early": "late",
    "light": "dark",
    "full": "empty",
    "open": "closed",
    "fast": "slow",
    "happy": "sad",
    "strong": "weak",
    "buy": "sell",
    "arrive": "leave",
    "ancient": "modern",
    "cheap": "expensive",
    "deep": "shallow",
    "quiet": "loud",
    "wide": "narrow",
    "wet": "dry",
}

BOT_FAQ: list[tuple[list[str], str]] = [
    (
        ["How do I switch models?", "Can I use a different model?", "How do I pick another model?"],
        "Use /model to see the available models, then /model NAME to switch this conversation to one.",
    ),
    (
        ["How do I clear our chat?", "Can you forget what we said?", "How do I start over?"],
        "Send /reset and I will forget this conversation's history. Your next message starts fresh.",
    ),
    (
        ["What can you do?", "What are you good at?", "How can you help me?"],
        "I can answer questions, explain ideas, do quick maths and help you write or rephrase short texts.",
    ),
    (
        ["Who are you?", "What is your name?", "Are you a bot?"],
        "I'm lorabot, a small chatbot running a fine-tuned language model on a CPU.",
    ),
    (
        ["Why is your answer slow?", "Why do you take a while to reply?"],
        "I run on a CPU and other people may be chatting with me too, "
        "so your message can wait in a short queue.",
    ),
    (
        ["How do I train my own model?", "Can I fine-tune you?"],
        "Run `lorabot train --preset tiny` for a quick CPU run, or a bigger preset on a GPU; "
        "add --register NAME and the new model shows up in /model.",
    ),
    (
        ["What does q4_k_m mean?", "What is a q4_k_m file?"],
        "It is a GGUF quantization type: most weights are stored in about 4.5 bits, "
        "which keeps a model small and fast on a CPU.",
    ),
    (
        ["Do you remember me tomorrow?", "Will you remember this conversation?"],
        "I keep this conversation's recent history until you send /reset, but I don't learn from it.",
    ),
]

CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Vienna", "Seoul", "Dublin"]
NAMES = ["Ana", "Ben", "Chloé", "Dev", "Emre", "Fatima", "Goran", "Hana", "Ivan", "Jun"]
WORDS = ["planet", "garden", "window", "rocket", "silver", "pencil", "dragon", "coffee", "bridge", "forest"]
ITEMS = ["apples", "books", "chairs", "tickets", "cookies", "stamps", "marbles", "pens"]


def q_capital(rng: random.Random) -> list[Turn]:
    country = rng.choice(list(CAPITALS))
    ask = rng.choice(
        [
            "What is the capital of {c}?",
            "Which city is the capital of {c}?",
            "capital of {c}?",
            "Tell me the capital city of {c}.",
        ]
    ).format(c=country)
    return [
        (
            ask,
            rng.choice(["The capital of {c} is {x}.", "{x} is the capital of {c}."]).format(
                c=country, x=CAPITALS[country]
            ),
        )
    ]


def q_arith(rng: random.Random) -> list[Turn]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    ask = rng.choice(
        [f"What is {a} {op} {b}?", f"What's {a} {word} {b}?", f"Compute {a} {op} {b}.", f"{a} {op} {b} = ?"]
    )
    turns = [(ask, f"{a} {op} {b} = {value}.")]
    if rng.random() < 0.35:
        k = rng.randint(2, 5)
        turns.append(
            (rng.choice([f"And times {k}?", f"Now multiply that by {k}."]), f"{value} × {k} = {value * k}.")
        )
    return turns


def q_percent(rng: random.Random) -> list[Turn]:
    p, n = rng.choice([5, 10, 15, 20, 25, 50, 75]), rng.choice([20, 40, 60, 80, 120, 200, 360, 500])
    value = p * n / 100
    text = f"{value:g}"
    return [
        (rng.choice([f"What is {p}% of {n}?", f"How much is {p} percent of {n}?"]), f"{p}% of {n} is {text}.")
    ]


def q_units(rng: random.Random) -> list[Turn]:
    kind = rng.choice(["km", "c", "kg", "h"])
    if kind == "km":
        n = rng.randint(1, 100)
        return [(f"How many miles is {n} km?", f"{n} km is about {n * 0.621371:.1f} miles.")]
    if kind == "c":
        n = rng.randint(-20, 40)
        return [
            (
                rng.choice([f"Convert {n}°C to Fahrenheit.", f"What is {n} degrees Celsius in Fahrenheit?"]),
                f"{n}°C is {n * 9 / 5 + 32:g}°F.",
            )
        ]
    if kind == "kg":
        n = rng.randint(1, 120)
        return [(f"How many pounds is {n} kg?", f"{n} kg is about {n * 2.20462:.1f} pounds.")]
    n = rng.randint(1, 12)
    return [(f"How many minutes are in {n} hours?", f"{n} hours is {n * 60} minutes.")]


def q_term(rng: random.Random) -> list[Turn]:
    term = rng.choice(list(TERMS))
    ask = rng.choice(
        [
            "What is {t}?",
            "Explain {t} in one sentence.",
            "Can you tell me what {t} is?",
            "Define {t}, briefly.",
        ]
    ).format(t=term)
    answer = f"{term[0].upper() + term[1:]} is {TERMS[term]}."
    turns = [(ask, answer)]
    if rng.random() < 0.3:
        turns.append(("Thanks!", rng.choice(["You're welcome!", "Glad it helped.", "Any time!"])))
    return turns


def q_opposite(rng: random.Random) -> list[Turn]:
    word = rng.choice(list(OPPOSITES))
    return [
        (
            rng.choice([f"What is the opposite of '{word}'?", f"Give me an antonym of {word}."]),
            f"The opposite of '{word}' is '{OPPOSITES[word]}'.",
        )
    ]


def q_text(rng: random.Random) -> list[Turn]:
    word = rng.choice(WORDS)
    task = rng.choice(["reverse", "upper", "count", "letters"])
    if task == "reverse":
        return [(f"Spell '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'.")]
    if task == "upper":
        phrase = f"the {word} is ready"
        return [(f"Write this in capital letters: {phrase}", phrase.upper())]
    if task == "count":
        return [(f"How many letters are in the word '{word}'?", f"'{word}' has {len(word)} letters.")]
    letter = rng.choice(sorted(set(word)))
    n = word.count(letter)
    return [
        (
            f"How many times does '{letter}' appear in '{word}'?",
            f"'{letter}' appears {n} time{'s' * (n != 1)} in '{word}'.",
        )
    ]


def q_sort(rng: random.Random) -> list[Turn]:
    numbers = rng.sample(range(1, 100), rng.randint(3, 7))
    order = rng.choice(["ascending", "descending"])
    result = sorted(numbers, reverse=order == "descending")
    return [
        (f"Sort these numbers in {order} order: {', '.join(map(str, numbers))}", ", ".join(map(str, result)))
    ]


def q_story(rng: random.Random) -> list[Turn]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    have, give = rng.randint(5, 30), rng.randint(1, 4)
    return [
        (
            f"{name} has {have} {item} and gives {give} away. How many are left?",
            f"{name} has {have} - {give} = {have - give} {item} left.",
        )
    ]


def q_faq(rng: random.Random) -> list[Turn]:
    asks, answer = rng.choice(BOT_FAQ)
    return [(rng.choice(asks), answer)]


def q_greeting(rng: random.Random) -> list[Turn]:
    name = rng.choice(NAMES)
    hello = rng.choice(["Hi!", "Hello there", "hey", "Good morning!"])
    turns = [(hello, rng.choice(["Hi! How can I help?", "Hello! What can I do for you?"]))]
    turns.append((f"My name is {name}.", f"Nice to meet you, {name}!"))
    if rng.random() < 0.5:
        turns.append(("What's my name?", f"You told me your name is {name}."))
    return turns


def q_trip(rng: random.Random) -> list[Turn]:
    city, days = rng.choice(CITIES), rng.randint(2, 6)
    return [
        (
            f"I'm visiting {city} for {days} days. Any packing tips?",
            "Pack light layers, comfortable walking shoes, a small umbrella and a power adapter; "
            f"for {days} days, {days // 2 + 1} changes of clothes you can mix are usually enough.",
        )
    ]


GENERATORS: list[Callable[[random.Random], list[Turn]]] = [
    q_capital,
    q_arith,
    q_percent,
    q_units,
    q_term,
    q_opposite,
    q_text,
    q_sort,
    q_story,
    q_faq,
    q_greeting,
    q_trip,
]
SYSTEMS = ["You are a concise assistant.", "You are lorabot, a friendly chatbot. Keep answers short."]


def conversations(rng: random.Random, count: int) -> Iterator[dict]:
    seen: set[str] = set()
    while len(seen) < count:
        turns = rng.choice(GENERATORS)(rng)
        row: list[dict] = []
        if rng.random() < 0.15:
            row.append({"from": "system", "value": rng.choice(SYSTEMS)})
        for question, answer in turns:
            row += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        key = json.dumps(row)
        if key not in seen:
            seen.add(key)
            yield {"conversations": row}


def main() -> None:
    rows = list(conversations(random.Random(SEED), TOTAL))
    for name, part in (("heldout", rows[:HELDOUT]), ("train", rows[HELDOUT:])):
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as out:
            for row in part:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows) - HELDOUT} train and {HELDOUT} held-out conversations to {HERE}")


if __name__ == "__main__":
    main()
