"""Contextual biasing: the playbook's key terms, handed to the recogniser as hints.

Whisper base hears the words that matter most as common homophones (双倍 -> 商贝, 辐射 -> 不认,
营业厅 -> 营业听, 工信部 -> 公信部). faster-whisper can put hint words in the decoder's prompt
(`hotwords=`, before the usual previous-text prompt), which makes the model prefer them when
the audio fits. The terms are derived from prompts/playbook.toml every time an engine is built,
so there is no second list to keep in step with the playbook.

The rule (`playbook_terms`), for the categories matched on the customer's words:

1. Split every phrase at the characters of Mandarin's closed word classes (pronouns, particles,
   negations, adverbs like 就/都/很, prepositions and the light verbs 找/去/上/打/发/要/说 ...,
   `CLOSED_CLASS`) and at anything that is not a Chinese character (digits are written the
   model's own way and the matcher folds numerals anyway). The runs of 2+ characters left are the
   content words the playbook author wrote: 我要去工信部 -> 工信部, 找记者 -> 记者,
   砸了你们营业厅 -> 砸 + 营业厅 -> 营业厅. A generic rule of the language, not a domain list.
2. Drop runs that appear in the phrases of more than `MAX_CATEGORIES` categories: a word every
   category uses (投诉, 你们 ...) is ordinary talk, not a key term.
3. Rank each category's runs in the playbook's order (a category lists its main phrase first:
   工信部, 精神赔偿, 双倍返还, 基站辐射, 霸王条款), runs of one phrase by support (how many of
   the category's phrases contain the run).
4. Interleave the categories round-robin in playbook order, so every category gets its best term
   before any gets its second; skip a term that overlaps a chosen one (基站 after 基站辐射, 媒体曝光
   after 曝光): the prompt already primes those characters, the budget goes to new words.
5. `fit_to_budget` keeps the longest prefix of that list whose joined hotword string stays
   within the token budget, counted with the model's own tokenizer (`whisper_token_counter`).

Measured (benchmarks/bench_biasing.py): the terms are joined with spaces. Joined with 、 (or
with spaces but only ~60 tokens of them) Whisper base appended pieces of the list to ordinary
sentences (换一首歌。赔钱、赔一百万、双倍返还): it decodes the audio after the last word as a
second window and echoes the prompt there. The engine drops such tail windows (no-speech
probability high, every word improbable; asr.whisper_engine._is_tail_window), and the benchmark
counts biasing terms written where the reference has none. A domain sentence as initial_prompt
(`domain_prompt`, `bench_biasing.py --prompt domain`) alone changed little; with the hotwords it
hurt ordinary 8 kHz speech less (CER 0.355 against 0.426 on the samples, whole files) but got
fewer playbook phrases right on the TTS calls (71 against 77 of 116), so the engine keeps its
short default prompt.

Agent categories are left out on purpose: their phrases (不归我管, 你去告吧) are everyday words
Whisper already hears, and priming the recogniser toward a forbidden phrase would invite false
alerts about the agent.

Budget: faster-whisper cuts hotwords at 223 tokens (half of Whisper's 448-token text context),
and the prompt (hotwords + initial prompt + 4 special tokens) and the tokens generated for a
segment share those 448. The engine caps a segment's max_new_tokens to what is left, so the
default `HOTWORD_TOKENS` leaves room for a 25 s segment of fast speech (~12 tokens a second).

Vosk (0.3.45) has no equivalent: KaldiRecognizer's grammar (a JSON phrase list) replaces the
language model, so everything outside the list becomes [unk] -- keyword spotting, not biasing
of free speech -- and new words or weights need the decoding graph recompiled offline (see
asr/vosk_engine.py). So biasing applies to the Whisper engine only.

    python -m asr.biasing [--budget N]     print the terms, the hotword string and its token count
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prompts.playbook import Playbook

# Characters of Mandarin's closed word classes, the glue around the content words of a phrase.
CLOSED_CLASS = frozenset(
    "我你您他她它们咱怎什"        # pronouns, 怎么/什么
    "的了吗呢吧啊呀着过得地"        # particles
    "不没别"                      # negation
    "就都也又很太再才更"            # adverbs (not 还: 返还, 退还)
    "这那哪个些么"                  # demonstratives, 什么/怎么
    "把被给让叫跟和向对在到从"      # prepositions, coverbs
    "找去来上下打发要说是有"        # light verbs: 找记者, 去法院, 上热搜, 打官司, 发微博, 要告
)
MAX_CATEGORIES = 2       # a run used by more categories than this is ordinary talk
SEPARATOR = " "          # one token; "、" (also one) made Whisper continue the list after the speech
HOTWORD_TOKENS = 120     # default budget (tokens); measured: 60 echoed, 223 cost more on ordinary speech
MAX_PROMPT_TOKENS = 223  # faster-whisper truncates hotwords beyond this (max_length // 2 - 1)


def _runs(phrase: str) -> list[str]:
    """Maximal runs of open-class Chinese characters, 2+ long."""
    runs, current = [], ""
    for ch in phrase:
        if "\u4e00" <= ch <= "\u9fff" and ch not in CLOSED_CLASS:
            current += ch
            continue
        if len(current) >= 2:
            runs.append(current)
        current = ""
    if len(current) >= 2:
        runs.append(current)
    return runs


def playbook_terms(playbook: Playbook, speaker: str = "customer") -> list[str]:
    """The playbook's key terms for `speaker`'s categories, most important first (no budget)."""
    categories = [c for c in playbook.categories if c.speaker == speaker]
    users: dict[str, set[str]] = {}           # run -> categories whose phrases contain it
    ranked: list[list[str]] = []
    for category in categories:
        found: dict[str, int] = {}            # run -> position of the first phrase it came from
        for position, phrase in enumerate(category.phrases):
            for run in _runs(phrase):
                found.setdefault(run, position)
        for run in found:
            users.setdefault(run, set()).add(category.id)
        support = {run: sum(run in p for p in category.phrases) for run in found}
        ranked.append(sorted(found, key=lambda run: (found[run], -support[run])))
    for other in playbook.categories:        # a run in other categories' phrases counts there too
        for run in users:
            if any(run in p for p in other.phrases):
                users[run].add(other.id)
    queues = [[run for run in runs if len(users[run]) <= MAX_CATEGORIES] for runs in ranked]
    terms: list[str] = []
    while any(queues):
        for queue in queues:
            while queue:
                run = queue.pop(0)
                if not any(run in chosen or chosen in run for chosen in terms):
                    terms.append(run)
                    break
    return terms


def fit_to_budget(terms: Iterable[str], count_tokens: Callable[[str], int],
                  budget: int = HOTWORD_TOKENS, separator: str = SEPARATOR) -> list[str]:
    """The longest prefix of `terms` whose hotword string (as faster-whisper encodes it, with a
    leading space) is at most `budget` tokens."""
    chosen: list[str] = []
    for term in terms:
        if count_tokens(hotword_string([*chosen, term], separator)) > budget:
            break
        chosen.append(term)
    return chosen


def hotword_string(terms: Sequence[str], separator: str = SEPARATOR) -> str:
    return separator.join(terms)


def domain_prompt(terms: Sequence[str], count: int = 6) -> str:
    """A neutral sentence about the domain naming the first `count` terms, for `initial_prompt`
    (Whisper continues the style of its prompt: simplified characters, full-width punctuation)."""
    named = "、".join(terms[:count])
    return f"以下是中国电信、中国移动客服电话里的普通话对话，客户在投诉，可能提到{named}。"


def whisper_token_counter(model_dir_or_tokenizer) -> Callable[[str], int]:
    """Tokens of `text` as faster-whisper encodes a prompt (" " + text), with the tokenizer
    shipped in a CTranslate2 model directory (or a loaded `tokenizers.Tokenizer`, e.g. a
    WhisperModel's `hf_tokenizer`)."""
    from faster_whisper.tokenizer import Tokenizer

    hf_tokenizer = model_dir_or_tokenizer
    if isinstance(model_dir_or_tokenizer, (str, Path)):
        import tokenizers
        hf_tokenizer = tokenizers.Tokenizer.from_file(str(Path(model_dir_or_tokenizer) / "tokenizer.json"))
    tokenizer = Tokenizer(hf_tokenizer, True, task="transcribe", language="zh")
    return lambda text: len(tokenizer.encode(" " + text.strip())) if text.strip() else 0


@dataclass(frozen=True)
class WhisperBiasing:
    """What the Whisper engine passes to `transcribe`, and what it cost."""
    terms: tuple[str, ...]
    hotwords: str
    hotword_tokens: int


def whisper_biasing(playbook: Playbook, count_tokens: Callable[[str], int],
                    budget: int = HOTWORD_TOKENS) -> WhisperBiasing:
    if not 0 < budget <= MAX_PROMPT_TOKENS:
        raise ValueError(f"hotword budget must be 1..{MAX_PROMPT_TOKENS} tokens, got {budget}")
    terms = fit_to_budget(playbook_terms(playbook), count_tokens, budget)
    hotwords = hotword_string(terms)
    return WhisperBiasing(tuple(terms), hotwords, count_tokens(hotwords) if terms else 0)


def main(argv: Sequence[str] | None = None) -> int:
    from asr.models import find_model
    from prompts.playbook import load_playbook

    parser = argparse.ArgumentParser(description="Print the Whisper biasing terms derived from the playbook.")
    parser.add_argument("--budget", type=int, default=HOTWORD_TOKENS, help="hotword tokens (default %(default)s)")
    parser.add_argument("--model", default="", help="Whisper model directory (default: found as usual)")
    args = parser.parse_args(argv)
    playbook = load_playbook()
    count = whisper_token_counter(find_model("whisper", args.model))
    biasing = whisper_biasing(playbook, count, args.budget)
    everything = playbook_terms(playbook)
    print(f"{len(everything)} candidate terms from the playbook; {len(biasing.terms)} fit in "
          f"{args.budget} tokens ({biasing.hotword_tokens} used)")
    print(f"hotwords: {biasing.hotwords}")
    print(f"left out: {SEPARATOR.join(everything[len(biasing.terms):])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
