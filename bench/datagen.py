"""Generated datasets with realistic length distributions (deterministic for a seed; no download).

- alpaca rows: ``instruction`` / ``input`` / ``output`` sized like the Stanford Alpaca set (instructions of
  about a dozen words; an input in 40% of rows; answers log-normally distributed around 35 words with a
  long tail up to several hundred words);
- chat conversations: ``messages`` lists of 1 to 6 user/assistant exchanges, an optional system message,
  answers longer than questions (ShareGPT-like).

Words are drawn with Zipf-like frequencies from the vocabulary of gym's built-in tokenizer corpus, so the quickstart
tokenizer sees text like the text it was trained on. Run ``python bench/datagen.py alpaca 1000 out.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
import sys
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[list[str], list[float]]:
    from gym.tiny import builtin_corpus

    words = sorted({w.strip(".?!:").lower() for line in builtin_corpus(lines=400) for w in line.split()})
    words = [w for w in words if w.isalpha()]  # the corpus's arithmetic lines add numbers; text has few
    rng = random.Random(1234)
    rng.shuffle(words)
    cumulative, total = [], 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 2.7)  # Zipf-Mandelbrot: the commonest word is about 8% of the text
        cumulative.append(total)
    return words, cumulative


class TextMaker:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.words, self.cum = _vocabulary()

    def lognormal_words(self, median: float, sigma: float, low: int, high: int) -> int:
        return max(low, min(high, round(self.rng.lognormvariate(math.log(median), sigma))))

    def text(self, n_words: int) -> str:
        rng = self.rng
        picks = rng.choices(self.words, cum_weights=self.cum, k=n_words)
        out, sentence_left = [], rng.randint(6, 20)
        for i, word in enumerate(picks):
            if rng.random() < 0.02:
                word = str(rng.randint(0, 9999))
            if not out or out[-1].endswith((".", "?", "!")):
                word = word.capitalize()
            sentence_left -= 1
            if sentence_left == 0 or i == n_words - 1:
                word += rng.choice(".....?!")
                sentence_left = rng.randint(6, 20)
            elif rng.random() < 0.05:
                word += ","
            out.append(word)
        if n_words > 60 and rng.random() < 0.5:  # longer answers often come as paragraphs or lists
            cut = rng.randint(20, n_words - 20)
            out[cut] = "\n\n" + out[cut]
        return " ".join(out)


def alpaca_rows(n: int, seed: int = 0):
    maker = TextMaker(seed)
    for _ in range(n):
        has_input = maker.rng.random() < 0.4
        yield {
            "instruction": maker.text(maker.lognormal_words(12, 0.45, 3, 80)),
            "input": maker.text(maker.lognormal_words(15, 0.8, 1, 300)) if has_input else "",
            "output": maker.text(maker.lognormal_words(35, 0.95, 1, 900)),
        }


def chat_rows(n: int, seed: int = 0):
    maker = TextMaker(seed + 7919)
    for _ in range(n):
        messages = []
        if maker.rng.random() < 0.3:
            messages.append({"role": "system", "content": maker.text(maker.lognormal_words(15, 0.5, 3, 60))})
        exchanges = min(6, 1 + int(maker.rng.expovariate(1 / 1.3)))
        for _ in range(exchanges):
            messages.append({"role": "user", "content": maker.text(maker.lognormal_words(18, 0.8, 2, 300))})
            messages.append({"role": "assistant", "content": maker.text(maker.lognormal_words(60, 0.8, 2, 700))})
        yield {"messages": messages}


GENERATORS = {"alpaca": alpaca_rows, "chat": chat_rows}


def write_jsonl(kind: str, n: int, path: Path, seed: int = 0) -> Path:
    """Write ``n`` rows of ``kind`` to ``path`` (kept when it already holds exactly that)."""
    path = Path(path)
    stamp = path.with_suffix(path.suffix + ".done")
    key = f"{kind} {n} {seed} v3"
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in GENERATORS[kind](n, seed):
            f.write(json.dumps(row) + "\n")
    stamp.write_text(key)
    return path


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f]


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    if len(sys.argv) != 4 or sys.argv[1] not in GENERATORS:
        sys.exit("usage: python bench/datagen.py {alpaca,chat} ROWS OUT.jsonl")
    print(write_jsonl(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
