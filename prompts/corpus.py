"""The labelled utterance corpus (prompts/corpus/): reading, splitting, ASR-like noise.

A corpus file is UTF-8 TSV, one utterance a line: `labels<TAB>speaker<TAB>text`, labels
being category ids joined by commas or `-` for none; `#` starts a comment line. How the
files were written and split is told in prompts/corpus/README.md.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import opencc

from callassist.events import Speaker, is_speaker
from prompts.normalize import normalize, to_pinyin
from prompts.playbook import Playbook

CORPUS_DIR = Path(__file__).with_name("corpus")
WRITTEN_DIR = CORPUS_DIR / "written"      # the training authors' files: train + dev
BLIND_FILE = CORPUS_DIR / "blind.tsv"     # written first, from the seeds alone; never tuned on
DEV_SHARE = 5                             # one line in 5 goes to dev, by a hash of its text


class CorpusError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    speaker: Speaker
    text: str
    labels: frozenset[str]
    source: str = ""                      # file:line


def read_tsv(path: Path, playbook: Playbook | None = None) -> list[Example]:
    """Read one corpus file; a malformed line is an error naming the file and line."""
    speakers = ({c.id: c.speaker for c in playbook.categories} if playbook else None)
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        where = f"{path}:{number}"
        if len(parts) != 3:
            raise CorpusError(f"{where}: expected labels<TAB>speaker<TAB>text, got {len(parts)} columns")
        raw_labels, speaker, text = (p.strip() for p in parts)
        if not is_speaker(speaker):
            raise CorpusError(f"{where}: speaker must be customer or agent, got {speaker!r}")
        labels = frozenset() if raw_labels == "-" else frozenset(
            label.strip() for label in raw_labels.split(",") if label.strip())
        if speakers is not None:
            for label in labels:
                if label not in speakers:
                    raise CorpusError(f"{where}: unknown category {label!r}")
                if speakers[label] != speaker:
                    raise CorpusError(f"{where}: {label} is a {speakers[label]} category, "
                                      f"the line is the {speaker}'s")
        if not normalize(text):
            raise CorpusError(f"{where}: empty text")
        examples.append(Example(speaker, text, labels, where))
    return examples


def is_dev(example: Example) -> bool:
    """The fixed train/dev split: by a hash of the normalised text, so duplicates and
    re-orderings land on the same side and the split never depends on file order."""
    digest = hashlib.sha1(normalize(example.text).encode()).digest()
    return digest[0] % DEV_SHARE == 0


def written(playbook: Playbook | None = None) -> list[Example]:
    examples = []
    for path in sorted(WRITTEN_DIR.glob("*.tsv")):
        examples.extend(read_tsv(path, playbook))
    return examples


def train_dev(playbook: Playbook) -> tuple[list[Example], list[Example]]:
    """Train: the written corpus minus dev, plus the playbook's own phrases, examples and
    counter-examples. Dev: one written line in DEV_SHARE."""
    train: list[Example] = []
    dev: list[Example] = []
    for example in written(playbook):
        (dev if is_dev(example) else train).append(example)
    for category in playbook.categories:
        for text in (*category.phrases, *category.examples):
            train.append(Example(category.speaker, text, frozenset({category.id}),
                                 f"playbook:{category.id}"))
        for text in category.counter_examples:
            train.append(Example(category.speaker, text, frozenset(),
                                 f"playbook:{category.id}:counter"))
    return train, dev


def corpus_digest(examples: list[Example]) -> str:
    """Identifies the data a model was trained on (order-independent)."""
    digest = hashlib.sha256()
    for e in sorted(examples, key=lambda e: (e.speaker, e.text, sorted(e.labels))):
        digest.update(f"{e.speaker}\t{e.text}\t{','.join(sorted(e.labels))}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- ASR-like noise

_S2T = opencc.OpenCC("s2t")
_FILLERS = "的了啊呢吧嗯那就"


class AsrNoise:
    """Makes a sentence look like recogniser output: homophone substitution (a character
    replaced by another one read the same, from a pool of common characters), dropped and
    inserted characters, traditional characters, Vosk-style spaces. Deterministic for a
    given seed."""

    def __init__(self, pool: str, seed: int = 0, substitute: float = 0.12,
                 drop: float = 0.03, insert: float = 0.03, traditional: float = 0.1,
                 spaces: float = 0.2) -> None:
        self.random = random.Random(seed)
        self.rates = (substitute, drop, insert, traditional, spaces)
        self.homophones: dict[str, list[str]] = {}
        for ch in dict.fromkeys(pool):
            if "\u4e00" <= ch <= "\u9fff":
                self.homophones.setdefault(to_pinyin(ch)[0], []).append(ch)

    def __call__(self, text: str) -> str:
        substitute, drop, insert, traditional, spaces = self.rates
        rnd = self.random
        out = []
        for ch in text:
            r = rnd.random()
            if r < drop:
                continue
            if r < drop + substitute and "\u4e00" <= ch <= "\u9fff":
                others = [c for c in self.homophones.get(to_pinyin(ch)[0], ()) if c != ch]
                if others:
                    ch = rnd.choice(others)
            out.append(ch)
            if rnd.random() < insert:
                out.append(rnd.choice(_FILLERS))
        noisy = "".join(out) or text
        if rnd.random() < traditional:
            noisy = _S2T.convert(noisy)
        if rnd.random() < spaces:
            noisy = " ".join(noisy)
        return noisy


def character_pool(examples: list[Example], playbook: Playbook) -> str:
    """Common characters to draw homophones from: those the corpus and playbook use."""
    texts = [e.text for e in examples]
    for category in playbook.categories:
        texts.extend(category.phrases)
        texts.extend(category.examples)
    return "".join(sorted(set("".join(texts))))


def noisy_copies(examples: list[Example], noise: AsrNoise, copies: int) -> list[Example]:
    return [Example(e.speaker, noise(e.text), e.labels, e.source + ":noisy")
            for e in examples for _ in range(copies)]
