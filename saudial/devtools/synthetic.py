"""Synthetic, SauDial-shaped data: the shipped sample, the test fixtures and a learnable toy task.

The real SauDial workbook is not redistributed here (its licence is unstated). This module writes a
file with the same sheet, columns and quirks, so that the loader is exercised on everything the
published file does to it:

- sheet ``SADGLD``, the 12 published columns, dialect shares 271/265/241/223 per 1,000 rows;
- ``English Text`` and ``Dialect Translation`` wrapped in literal double quotes;
- one empty ``In-Game Context``;
- 3 rows that repeat another row exactly, 1 (Dialect, English) pair with two different translations,
  5 English texts that occur more than once in all;
- mostly one short line, a tenth paragraphs (English up to ~800 characters), Arabic script with
  diacritics (shadda) and Arabic punctuation; ``Localization Difficulty`` an integer 1-5.

The "translations" are a fixed word-by-word code per dialect over a small English vocabulary: NOT
Arabic translations, but a task a small model can learn, with held-out sentences made of seen words.
Every file written here says SYNTHETIC in its Scenario column and in its name. `make_conversations` turns the same
rows into chat data (SAUDIAL_TASK=chat, TRL's `messages` format) for `make demo-chat` and the tests.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

from saudial.data.text import SYNTHETIC_MARK, clean_text

DIALECT_SHARES = {"Najdi": 271, "Hijazi": 265, "Eastern": 241, "Southern": 223}
COLUMNS = [
    "Dialect",
    "Scenario",
    "Game Type",
    "Tone",
    "Age Rating",
    "English Text",
    "Modern Standard Arabic (MSA) Translation",
    "Dialect Translation",
    "Context and Rating",
    "Dialect Notes",
    "Localization Difficulty",
    "In-Game Context",
]
SHEET = "SADGLD"

VERBS = ["find", "bring", "open", "buy", "sell", "guard", "follow", "take", "give", "watch", "call", "help"]
ADJECTIVES = ["old", "brave", "golden", "dark", "small", "big", "hidden", "fast", "red", "quiet"]
NOUNS = [
    "sword", "shield", "dragon", "castle", "village", "merchant", "potion", "gold", "map", "door",
    "key", "horse", "friend", "king", "desert", "camel", "market", "tower", "coffee", "falcon",
]  # fmt: skip
EXTRAS = ["the", "to", "with", "now", "please", "my", "your", "and"]
VOCABULARY = VERBS + ADJECTIVES + NOUNS + EXTRAS

ARABIC_LETTERS = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"
SHADDA = "\u0651"
CONTEXTS = ["Main menu", "Quest log", "Shop dialogue", "Battle", "Tutorial", "Village square", "Loading screen"]
SCENARIOS = ["Quest Dialogue", "Shop", "Combat", "Tutorial", "Exploration"]
GAME_TYPES = ["RPG", "Adventure", "Strategy", "Racing", "Puzzle"]
TONES = ["Friendly", "Formal", "Humorous", "Urgent", "Mysterious"]
AGE_RATINGS = ["E", "T", "M"]


def _arabic_word(rng: random.Random) -> str:
    letters = [rng.choice(ARABIC_LETTERS) for _ in range(rng.randint(2, 5))]
    if rng.random() < 0.25:  # a shadda on one letter, as in the published text
        i = rng.randrange(len(letters))
        letters[i] += SHADDA
    return "".join(letters)


def word_codes(seed: int = 0) -> dict[str, dict[str, str]]:
    """Per variety ('MSA' and each dialect), a fixed English-word -> pseudo-Arabic-word code."""
    rng = random.Random(seed)
    msa = {word: _arabic_word(rng) for word in VOCABULARY}
    codes = {"MSA": msa}
    for dialect in DIALECT_SHARES:
        # Dialects share about half their words with MSA, as real dialects share much vocabulary.
        codes[dialect] = {w: (msa[w] if rng.random() < 0.5 else _arabic_word(rng)) for w in VOCABULARY}
    return codes


def _sentence(rng: random.Random) -> list[str]:
    words = []
    if rng.random() < 0.3:
        words.append("please")
    words += [rng.choice(VERBS), rng.choice(["the", "my", "your"])]
    if rng.random() < 0.7:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(NOUNS))
    if rng.random() < 0.5:
        words += [rng.choice(["to", "with"]), "the", rng.choice(NOUNS)]
    if rng.random() < 0.3:
        words.append("now")
    return words


def _text(rng: random.Random, paragraph: bool, longest: int = 20) -> list[list[str]]:
    """A list of sentences (each a list of words): one or two lines, or a paragraph of many."""
    count = rng.randint(min(6, longest), longest) if paragraph else rng.choice([1, 1, 2, 2, 3])
    return [_sentence(rng) for _ in range(count)]


def _render(sentences: list[list[str]], code: dict[str, str] | None) -> str:
    if code is None:  # English
        return " ".join(" ".join(s).capitalize() + ("!" if s[0] == "please" else ".") for s in sentences)
    # Arabic: the same words through the code, with the Arabic comma between sentences.
    return "، ".join(" ".join(code[w] for w in s) for s in sentences) + "."


def make_rows(
    n_rows: int = 1000, seed: int = 0, paragraph_share: float = 0.1, paragraph_sentences: int = 20
) -> pd.DataFrame:
    """A SauDial-shaped table of `n_rows` rows (at least 20) with all the published file's quirks.

    A `paragraph_share` of the rows are paragraphs of 6 to `paragraph_sentences` sentences.
    """
    if n_rows < 20:
        raise ValueError("need at least 20 rows to reproduce every quirk")
    rng = random.Random(seed)
    codes = word_codes(seed)
    counts = {d: round(n_rows * share / 1000) for d, share in DIALECT_SHARES.items()}
    counts["Najdi"] += n_rows - sum(counts.values())
    repeated = ["Hijazi", "Eastern", "Southern"]  # three rows are exact repeats of others
    for dialect in repeated:
        counts[dialect] -= 1
    dialects = [d for d, c in counts.items() for _ in range(c)]
    rng.shuffle(dialects)

    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for dialect in dialects:
        while True:  # every English text unique for now; the repeats are made on purpose below
            sentences = _text(rng, rng.random() < paragraph_share, paragraph_sentences)
            english = _render(sentences, None)
            if english not in seen:
                break
        seen.add(english)
        rows.append(_row(rng, dialect, sentences, codes))

    # One (Dialect, English) pair with a second, different translation and another context.
    a = next(i for i in range(2, len(rows)) if rows[i]["Dialect"] == rows[0]["Dialect"])
    rows[a] = dict(rows[0])
    rows[a]["Dialect Translation"] = str(rows[0]["Dialect Translation"]).replace(".", "؟")
    rows[a]["In-Game Context"] = "Alternative phrasing"
    # One English text used again in another dialect: the 5th English text that occurs more than once.
    b = next(i for i in range(a + 1, len(rows)) if rows[i]["Dialect"] != rows[1]["Dialect"])
    rows[b] = _row(rng, str(rows[b]["Dialect"]), rows[1]["_sentences"], codes)  # type: ignore[arg-type]
    # The one empty In-Game Context.
    rows[b + 1]["In-Game Context"] = None
    # Three exact repeats, spread through the file.
    for dialect in repeated:
        source = next(r for r in rows[b + 2 :] if r["Dialect"] == dialect)
        rows.insert(rng.randrange(10, len(rows)), dict(source))

    frame = pd.DataFrame(rows)[COLUMNS]
    return frame


def _row(rng: random.Random, dialect: str, sentences: list[list[str]], codes: dict[str, dict[str, str]]) -> dict:
    return {
        "Dialect": dialect,
        "Scenario": SYNTHETIC_MARK + rng.choice(SCENARIOS),  # how saudial tells it from SauDial
        "Game Type": rng.choice(GAME_TYPES),
        "Tone": rng.choice(TONES),
        "Age Rating": rng.choice(AGE_RATINGS),
        "English Text": '"' + _render(sentences, None) + '"',
        "Modern Standard Arabic (MSA) Translation": _render(sentences, codes["MSA"]),
        "Dialect Translation": '"' + _render(sentences, codes[dialect]) + '"',
        "Context and Rating": f"Synthetic example for {dialect}; rating {rng.randint(1, 5)}/5",
        "Dialect Notes": f"Synthetic word code of the {dialect} column, not a real translation",
        "Localization Difficulty": rng.randint(1, 5),
        "In-Game Context": rng.choice(CONTEXTS),
        "_sentences": sentences,
    }


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write the table in the format its extension names (.xlsx, .csv, .jsonl, .parquet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            frame.to_excel(writer, sheet_name=SHEET, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"unsupported extension {suffix!r}")
    return path


def make_conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` conversations from synthetic rows: a system prompt naming the dialect, an English line as the user's turn
    and its coded "translation" as the assistant's, one exchange or two; every fifth a conversational
    prompt/completion pair instead (only its completion is learned)."""
    frame = make_rows(max(2 * n, 20), seed)
    rows = [
        (str(d), clean_text(e), clean_text(t))
        for d, e, t in zip(frame["Dialect"], frame["English Text"], frame["Dialect Translation"], strict=True)
    ]
    lines: list[dict[str, Any]] = []
    for i in range(n):
        dialect, english, reply = rows[2 * i]
        _, english2, reply2 = rows[2 * i + 1]
        system = {"role": "system", "content": f"Answer in {dialect} Arabic."}
        turns = [{"role": "user", "content": english}, {"role": "assistant", "content": reply}]
        if i % 2:
            turns += [{"role": "user", "content": english2}, {"role": "assistant", "content": reply2}]
        if i % 5 == 4:
            lines.append({"prompt": [system, *turns[:-1]], "completion": turns[-1:], "dialect": dialect})
        else:
            lines.append({"messages": [system, *turns], "dialect": dialect})
    return lines


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic SauDial-shaped data file.")
    parser.add_argument("output", type=Path, help="file to write: .xlsx, .csv, .jsonl or .parquet")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat", action="store_true", help="conversations (.jsonl) instead of workbook rows")
    args = parser.parse_args(argv)
    if args.chat:
        write_jsonl(args.output, make_conversations(args.rows, args.seed))
        print(f"wrote {args.rows} synthetic conversations to {args.output}")
        return
    write(make_rows(args.rows, args.seed), args.output)
    print(f"wrote {args.rows} synthetic rows to {args.output}")


if __name__ == "__main__":
    main()
