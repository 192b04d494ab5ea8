"""Text normalisation and pinyin for matching Chinese ASR output against playbook phrases.

`normalize` makes two renderings of the same words compare equal: Vosk's spaced
words, traditional characters, full-width forms, punctuation and the many ways of
writing a number. `to_pinyin` gives one toneless syllable per character, and
`fold_pinyin` merges the initials/finals that ASR and southern accents confuse; the
matcher uses the folded form for scoring only. `folded_alternatives` lists the other
readings of heteronyms (长 chang/zhang): the reading chosen from context is arbitrary
for a character ASR got wrong (精神培长 for 精神赔偿), so the matcher lets any of them count.

Numeral rule (documented because it must not break ordinary words such as 一下,
一直, 一样, 万一, 千万别, 十分):
  A "numeral run" is a maximal run of 零〇一二两三四五六七八九幺 and 十百千万亿 (after
  full-width digits became ASCII). A run is converted to Arabic digits only when
  1. it is 3 or more plain digit characters (零〇一二三四五六七八九幺, ASCII digits),
     read digit by digit, as numbers are spoken: 一二三一五 -> 12315, 幺零零八六 -> 10086; or
  2. it parses as a well-formed Chinese number (十倍, 一百五, 两万五, 三千零二) AND
     either ends in 万/亿 (一万, 十万) or is followed by a measure word/unit from
     MEASURE_WORDS (倍 块 元 次 天 个 ...): 十倍 -> 10倍, 两个 -> 2个, 一百块 -> 100块.
  Anything else is left as written: 一下 一直 一样 七八个 三三两两 一五一十 万一 十分.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import opencc
from pypinyin import Style, lazy_pinyin
from pypinyin.contrib.tone_convert import to_normal
from pypinyin.phrases_dict import phrases_dict
from pypinyin.pinyin_dict import pinyin_dict

_T2S = opencc.OpenCC("t2s")

DIGITS = {"零": 0, "〇": 0, "一": 1, "幺": 1, "二": 2, "两": 2, "三": 3, "四": 4,
          "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
BIG_UNITS = {"万": 10_000, "亿": 100_000_000}
# Measure words / units after which a Chinese number is read as a quantity.
# Not 分 (十分 = "very") nor 点 (一点 = "a bit"); 分钟 is listed instead.
MEASURE_WORDS = ("倍", "块", "元", "万", "亿", "次", "天", "个", "月", "年", "号", "岁", "周",
                 "小时", "分钟", "秒", "毛", "角", "兆", "条", "遍", "台", "张", "份", "件",
                 "多", "g", "m")

_PLAIN_DIGITS = "零〇一二三四五六七八九幺0123456789"
_NUMERAL_RUN = re.compile("[零〇一二两三四五六七八九幺十百千万亿0-9]+")
_TOKEN = re.compile("[0-9]+|.")


def _is_dropped(ch: str) -> bool:
    """Whitespace, punctuation (CJK and ASCII) and control/format characters."""
    cat = unicodedata.category(ch)
    return cat[0] in "PZ" or cat in ("Cc", "Cf")


def _parse_chinese_number(run: str) -> int | None:
    """Value of a well-formed Chinese number (十, 三十五, 一百五, 两万零三), else None."""
    total = 0          # completed 万/亿 sections
    section = 0        # value below the current big unit
    digit: int | None = None
    last_unit = 10**9  # units inside a section must decrease: 千 > 百 > 十
    zero_seen = False
    for ch in _TOKEN.findall(run):      # ASCII digit runs are one token: 10万, 3千2
        if ch in DIGITS or ch.isdigit():
            value = DIGITS[ch] if ch in DIGITS else int(ch)
            if ch == "幺":
                return None
            if value == 0:
                if digit is not None:
                    return None
                zero_seen = True
                continue
            if digit is not None:       # 七八 (approximate) is not a number
                return None
            digit = value
        elif ch in SMALL_UNITS:
            unit = SMALL_UNITS[ch]
            if unit >= last_unit:
                return None
            if digit is None and not (ch == "十" and section == 0):
                return None             # 百/千 need a digit; a leading 十 means 10
            section += (digit or 1) * unit
            digit, last_unit, zero_seen = None, unit, False
        elif ch in BIG_UNITS:
            section += digit or 0
            if section == 0:
                return None             # 万一, 千万 as words
            if ch == "亿":
                total = (total + section) * BIG_UNITS[ch]
            else:
                if total % 100_000_000 >= 10_000:
                    return None
                total += section * BIG_UNITS[ch]
            section, digit, last_unit, zero_seen = 0, None, 10**9, False
        else:
            return None
    if digit is not None:
        tokens = _TOKEN.findall(run)
        prev = tokens[-2] if len(tokens) > 1 else ""
        if not zero_seen and prev in SMALL_UNITS and SMALL_UNITS[prev] > 10:
            digit *= SMALL_UNITS[prev] // 10      # 一百五 = 150, 三千二 = 3200
        elif not zero_seen and prev in BIG_UNITS:
            digit *= BIG_UNITS[prev] // 10        # 两万五 = 25000
        section += digit
    value = total + section
    return value if (value or run in ("零", "〇")) else None


def _convert_run(run: str, following: str) -> str:
    if len(run) >= 3 and all(ch in _PLAIN_DIGITS for ch in run):
        return "".join(str(DIGITS.get(ch, ch)) for ch in run)
    if run.isdigit() and run.isascii():
        return run
    if not following.startswith(MEASURE_WORDS) and run[-1] not in BIG_UNITS:
        return run
    value = _parse_chinese_number(run)
    return run if value is None else str(value)


def _convert_numerals(text: str) -> str:
    return _NUMERAL_RUN.sub(lambda m: _convert_run(m.group(), text[m.end():m.end() + 2]), text)


@lru_cache(maxsize=8192)
def normalize(text: str) -> str:
    """Canonical form for matching: no spaces/punctuation, simplified, half-width,
    lower-case Latin, numbers as Arabic digits (see the module docstring for the rule)."""
    text = unicodedata.normalize("NFKC", text)
    text = _T2S.convert(text).lower()
    text = "".join(ch for ch in text if not _is_dropped(ch))
    return _convert_numerals(text)


@lru_cache(maxsize=16384)
def _syllable(chunk: str) -> tuple[str, ...]:
    return tuple(lazy_pinyin(chunk, style=Style.NORMAL))


def _is_heteronym(ch: str) -> bool:
    return "," in pinyin_dict.get(ord(ch), "")


def _char_pinyin(text: str, i: int) -> str:
    ch = text[i]
    if ord(ch) not in pinyin_dict:
        return ch                       # digits, Latin, symbols stay as themselves
    if _is_heteronym(ch):
        # The reading a two-character word gives it (返还 huan, 还要 hai), else the default.
        if i > 0 and text[i - 1:i + 1] in phrases_dict:
            return _syllable(text[i - 1:i + 1])[1]
        if i + 1 < len(text) and text[i:i + 2] in phrases_dict:
            return _syllable(text[i:i + 2])[0]
    return _syllable(ch)[0]


@lru_cache(maxsize=8192)
def to_pinyin(text: str) -> tuple[str, ...]:
    """Toneless pinyin, exactly one item per character of `text` (non-Chinese chars as
    themselves). Character-by-character with two-character-word context for heteronyms:
    consistent for phrase and utterance alike and ~30x faster than segmenting lazy_pinyin."""
    return tuple(_char_pinyin(text, i) for i in range(len(text)))


_FOLD_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"))
_FOLD_FINALS = (("ang", "an"), ("eng", "en"), ("ing", "in"))


@lru_cache(maxsize=4096)
def fold_syllable(syllable: str, h_f: bool = False) -> str:
    """Merge near-homophones: zh/z ch/c sh/s n/l, -ang/-an -eng/-en -ing/-in, and h/f
    when `h_f` (hu -> fu, as in southern accents). For scoring only, never for display."""
    for long, short in _FOLD_INITIALS:
        if syllable.startswith(long):
            syllable = short + syllable[len(long):]
            break
    if h_f and syllable.startswith("h"):
        syllable = "f" + syllable[1:]
    for long, short in _FOLD_FINALS:
        if syllable.endswith(long):
            return syllable[:-len(long)] + short
    return syllable


@lru_cache(maxsize=8192)
def fold_pinyin(syllables: tuple[str, ...], h_f: bool = False) -> tuple[str, ...]:
    return tuple(fold_syllable(s, h_f) for s in syllables)


@lru_cache(maxsize=8192)
def readings(ch: str) -> tuple[str, ...]:
    """Every toneless reading of one character (pypinyin's heteronyms), most common
    first, without duplicates: 长 -> (zhang, chang); (ch,) for a non-Chinese character."""
    tones = pinyin_dict.get(ord(ch)) if len(ch) == 1 else None
    if not tones:
        return (ch,)
    return tuple(dict.fromkeys(to_normal(t) for t in tones.split(",")))


@lru_cache(maxsize=16384)
def _other_folded_readings(ch: str, chosen: str, h_f: bool) -> tuple[str, ...]:
    return tuple(r for r in dict.fromkeys(fold_syllable(r, h_f) for r in readings(ch))
                 if r != chosen)


@lru_cache(maxsize=8192)
def folded_alternatives(text: str, h_f: bool = False) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """(position, other folded readings) for each heteronym of `text` whose readings
    still differ after folding from the one `to_pinyin` chose: 培长 -> ((1, ("can",)),).
    Only heteronyms cost more than a dict lookup."""
    chosen = fold_pinyin(to_pinyin(text), h_f)
    found = []
    for i, ch in enumerate(text):
        if _is_heteronym(ch):
            others = _other_folded_readings(ch, chosen[i], h_f)
            if others:
                found.append((i, others))
    return tuple(found)
