"""`callassist playbook check`: validate the playbook, its citations and its examples.

Structural problems come from `load_playbook`. `check_playbook` then checks what
the loader cannot: the category ids the product relies on, unknown citation keys,
citations against the verified legal table (row present, status VERIFIED, quote
verbatim, article number in the row, versions that meet without overlap), every
quote a complete provision (no sentence cut off, no list item without its lead-in), empty
scripts, malformed or duplicate phrases, and finally, with the real matcher,
that every example fires its category, no counter-example does, and no
key_phrase an agent is meant to say trips an agent-side category.
"""
from __future__ import annotations

import datetime as dt
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from prompts.playbook import CITATIONS_FILE, PLAYBOOK_FILE, Playbook, PlaybookError, load_playbook

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LEGAL_TABLE = PROJECT_ROOT.parent / "shared" / "domain" / "legal-citations.md"

# Category ids other parts of the product (UI, QA, tests) refer to by name.
REQUIRED_IDS: tuple[str, ...] = (
    "mental_distress_compensation", "media_exposure", "regulator_complaint", "lawsuit_threat",
    "unauthorized_charge", "excessive_compensation", "double_refund", "base_station_radiation",
    "privacy_leak", "network_quality", "bill_shock", "service_suspension", "unfair_terms",
    "false_advertising", "apology_demand", "supervisor_demand", "violence_threat",
    "repeated_complaint", "agent_forbidden_phrase",
)
PHRASE_LENGTH = (2, 8)            # characters, spaces aside: the short cores ASR produces
_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
_ROW_ID = re.compile(r"\d+[a-z]?")
_ARTICLE = re.compile(r"第[零〇一二三四五六七八九十百千]+条(?:之[一二三四五六七八九十])?")
_QUOTE = re.compile(r"「(.*?)」")
# A list item's number as laws write it: （一） (一) （1） 1. 1、 一、
_ITEM = r"(?:[（(](?:[一二三四五六七八九十百]+|\d+)[）)]|\d+[.．、]|[一二三四五六七八九十百]+、)"
_STARTS_WITH_ITEM = re.compile(_ITEM)
_LEAD_IN_ITEM = re.compile("：(?:…+)?" + _ITEM)    # 有下列情形之一的……：（一）…
_ELLIPSIS = re.compile(r"…+")                       # …… marks text of the law left out
_SENTENCE_END = "。！？"
_CLOSERS = "”’」』）)》"


@dataclass(frozen=True)
class LegalRow:
    row_id: str
    article: str        # the Art. cell, whitespace removed
    status: str
    quotes: tuple[str, ...]   # the 「」 quotations, whitespace removed
    # quotations written side by side (「…」「…」, nothing between), which a quote may join
    runs: tuple[tuple[str, ...], ...] = ()


def _squash(text: str) -> str:
    return "".join(text.split())


def parse_legal_table(path: Path) -> dict[str, LegalRow]:
    """Rows of the main table of legal-citations.md, by row id ("1d", "9", "10")."""
    rows: dict[str, LegalRow] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not _ROW_ID.fullmatch(cells[0]):
            continue
        runs: list[list[str]] = []
        previous_end = None
        for m in _QUOTE.finditer(line):
            if previous_end is None or line[previous_end:m.start()].strip():
                runs.append([])
            runs[-1].append(_squash(m.group(1)))
            previous_end = m.end()
        rows[cells[0]] = LegalRow(row_id=cells[0], article=_squash(cells[3]), status=cells[-1],
                                  quotes=tuple(_squash(q) for q in _QUOTE.findall(line)),
                                  runs=tuple(tuple(r) for r in runs))
    return rows


def incomplete_reason(quote: str) -> str | None:
    """Why `quote` is not a complete provision, or None when it is.

    A card must show something that can be read aloud and relied on: a quote ends
    where a sentence of the law ends (。！？), and a list item comes with its lead-in
    (有下列情形之一的……：（一）…；), in which case it may end as the law ends the
    item (；). An item of the law skipped between lead-in and item is marked ……
    """
    text = _squash(quote)
    if not text:
        return "it is empty"
    item = _STARTS_WITH_ITEM.match(text)
    if item:
        return (f"it is a bare list item {item.group()} without its lead-in: quote the lead-in "
                f"before it (……：{item.group()}…)")
    if _ELLIPSIS.match(text):
        return "it starts with an ellipsis, mid-sentence"
    end = text.rstrip(_CLOSERS) or text
    last = end[-1]
    if last in _SENTENCE_END:
        return None
    if last == "；" and _LEAD_IN_ITEM.search(text):
        return None                         # a list item after its lead-in, as the law ends it
    if last in "，、：；,;:…":
        return f"it ends mid-sentence in '{last}': quote up to the end of the sentence"
    return "it does not end with sentence-final punctuation (。！？)"


def _runs(row: LegalRow) -> tuple[tuple[str, ...], ...]:
    return row.runs or tuple((q,) for q in row.quotes)


def _locate(quote: str, row: LegalRow) -> tuple[int, int] | None:
    """Where `quote` starts in the row, (run, offset), or None if it is not verbatim.

    The quote is one or more parts separated by …… (text of the law left out); each part
    is a verbatim substring of one run of side-by-side quotations, the parts in row order.
    """
    parts = _ELLIPSIS.split(_squash(quote))
    if parts and not parts[0]:
        parts = parts[1:]                   # a leading …… is judged by incomplete_reason
    if not parts or not all(parts):
        return None
    runs = ["".join(run) for run in _runs(row)]
    first = None
    run_i, offset = 0, 0
    for part in parts:
        while run_i < len(runs) and runs[run_i].find(part, offset) < 0:
            run_i, offset = run_i + 1, 0
        if run_i == len(runs):
            return None
        found = runs[run_i].find(part, offset)
        first = first or (run_i, found)
        offset = found + len(part)
    return first


def _starts_mid_sentence(row: LegalRow, run_i: int, offset: int) -> bool:
    """A quote taken from inside a quotation must start where a sentence or clause starts."""
    run = _runs(row)[run_i]
    starts = {sum(len(q) for q in run[:i]) for i in range(len(run))}
    return offset not in starts and "".join(run)[offset - 1] not in _SENTENCE_END + "；"


def _normalise_phrase(text: str) -> str:
    """The form duplicates are compared in; the matcher's own normaliser when available."""
    try:
        from prompts.normalize import normalize
        return normalize(text)
    except ImportError:
        return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower()
                       if unicodedata.category(ch)[0] not in "PZSC")


def _check_ids(playbook: Playbook) -> list[str]:
    problems = []
    ids = [c.id for c in playbook.categories]
    for cid in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"category {cid}: id used {ids.count(cid)} times")
    for cid in ids:
        if not _SNAKE.fullmatch(cid):
            problems.append(f"category {cid}: id must be snake_case")
    for cid in REQUIRED_IDS:
        if cid not in ids:
            problems.append(f"required category {cid} is missing")
    return problems


def _check_category_fields(playbook: Playbook) -> list[str]:
    problems = []
    for cat in playbook.categories:
        where = f"category {cat.id}"
        for field in ("phrases", "script", "key_phrases"):
            if not getattr(cat, field):
                problems.append(f"{where}: no {field}")
        if not cat.examples:
            problems.append(f"{where}: no examples (sentences that must fire it)")
        for key in cat.citations:
            if key not in playbook.citations:
                problems.append(f"{where}: unknown citation key {key!r}")
        if cat.threshold is not None and not (
                isinstance(cat.threshold, (int, float)) and 50 <= cat.threshold <= 100):
            problems.append(f"{where}: threshold must be a number between 50 and 100, got {cat.threshold!r}")
        if cat.cooldown < 0:
            problems.append(f"{where}: cooldown must not be negative")
        if cat.severity == "critical" and not cat.alert_supervisor:
            problems.append(f"{where}: a critical category must alert the supervisor")
        for phrase in cat.phrases:
            core = "".join(ch for ch in phrase if not unicodedata.category(ch).startswith(("P", "Z")))
            if any(unicodedata.category(ch).startswith("P") for ch in phrase):
                problems.append(f"{where}: phrase {phrase!r} contains punctuation")
            low, high = PHRASE_LENGTH
            if not low <= len(core) <= high:
                problems.append(f"{where}: phrase {phrase!r} should be {low}-{high} characters, "
                                f"is {len(core)} (keep the short core ASR produces)")
        excluded = {_normalise_phrase(e) for e in cat.exclude}
        for phrase in cat.phrases:
            if _normalise_phrase(phrase) in excluded:
                problems.append(f"{where}: phrase {phrase!r} is also in exclude")
    return problems


def _check_duplicates(playbook: Playbook) -> list[str]:
    problems = []
    for speaker in ("customer", "agent"):
        owner: dict[str, tuple[str, str]] = {}     # normalised phrase -> (category id, phrase)
        for cat in playbook.categories:
            if cat.speaker != speaker:
                continue
            for phrase in cat.phrases:
                norm = _normalise_phrase(phrase)
                if norm not in owner:
                    owner[norm] = (cat.id, phrase)
                    continue
                first_cat, first_phrase = owner[norm]
                if first_cat == cat.id:
                    problems.append(f"category {cat.id}: duplicate phrase {phrase!r} (same as {first_phrase!r})")
                else:
                    problems.append(f"category {cat.id}: phrase {phrase!r} duplicates {first_phrase!r} "
                                    f"of category {first_cat} ({speaker} side)")
    return problems


def _version_where(where: str, cit) -> str:
    return where + (f" (in force from {cit.in_force_from})" if cit.in_force_from
                    else f" (in force until {cit.in_force_until})" if cit.in_force_until else "")


def _check_citations(playbook: Playbook, legal_md: Path, notes: list[str]) -> list[str]:
    problems = []
    if not legal_md.is_file():
        notes.append(f"legal table {legal_md} not found: citation rows and quotes were not checked")
        rows = None
    else:
        rows = parse_legal_table(legal_md)
    for key, versions in playbook.citations.items():
        where = f"citation {key}"
        if not _SNAKE.fullmatch(key):
            problems.append(f"{where}: key must be snake_case")
        problems.extend(_check_versions(where, versions))
        for cit in versions:
            vwhere = _version_where(where, cit)
            reason = incomplete_reason(cit.quote)
            if reason:
                problems.append(f"{vwhere}: quote is not a complete provision: {reason}: "
                                f"{cit.quote[:40]}{'…' if len(cit.quote) > 40 else ''}")
        if rows is None:
            continue
        for cit in versions:
            vwhere = _version_where(where, cit)
            row = rows.get(str(cit.source_row))
            if row is None:
                problems.append(f"{vwhere}: source_row {cit.source_row!r} is not a row of {legal_md.name}")
                continue
            if not row.status.startswith("VERIFIED"):
                problems.append(f"{vwhere}: row {row.row_id} is not VERIFIED (status: {row.status})")
            where_in_row = _locate(cit.quote, row)
            if where_in_row is None:
                problems.append(f"{vwhere}: quote is not a verbatim substring of a 「」 quotation "
                                f"in row {row.row_id} (side-by-side quotations may be joined, "
                                f"…… between parts in row order): {cit.quote[:40]}…")
            elif _starts_mid_sentence(row, where_in_row[0], where_in_row[1]):
                problems.append(f"{vwhere}: quote is not a complete provision: it starts "
                                f"mid-sentence in row {row.row_id}: {cit.quote[:40]}…")
            number = _ARTICLE.search(cit.article)
            if number and number.group() not in row.article:
                problems.append(f"{vwhere}: article {number.group()} does not appear in row "
                                f"{row.row_id} ({row.article})")
    return problems


def _check_versions(where: str, versions) -> list[str]:
    """Several versions must be dated, in order, and meet without gap or overlap."""
    if len(versions) < 2:
        return []
    problems = []
    for earlier, later in zip(versions, versions[1:]):
        if earlier.in_force_until is None or later.in_force_from is None:
            problems.append(f"{where}: every version but the last needs in_force_until and every "
                            f"version but the first needs in_force_from")
            continue
        if not (isinstance(earlier.in_force_until, dt.date) and isinstance(later.in_force_from, dt.date)):
            problems.append(f"{where}: in_force_from/in_force_until must be TOML dates (unquoted)")
            continue
        if later.in_force_from != earlier.in_force_until + dt.timedelta(days=1):
            problems.append(f"{where}: versions must follow each other day to day "
                            f"({earlier.in_force_until} then {later.in_force_from})")
    return problems


def _check_examples(playbook: Playbook, threshold: float, use_pinyin: bool,
                    notes: list[str]) -> list[str]:
    try:
        from prompts.matcher import Matcher
    except ImportError as exc:
        notes.append(f"prompts.matcher not importable ({exc}): examples were not checked")
        return []
    matcher = Matcher(playbook, threshold=threshold, use_pinyin=use_pinyin)
    problems = []
    for cat in playbook.categories:
        for sentence in cat.examples:
            if not any(m.category.id == cat.id for m in matcher.match(sentence, cat.speaker)):
                problems.append(f"category {cat.id}: example does not fire it: {sentence}")
        for sentence in cat.counter_examples:
            hit = next((m for m in matcher.match(sentence, cat.speaker) if m.category.id == cat.id), None)
            if hit is not None:
                problems.append(f"category {cat.id}: counter-example fires it via phrase "
                                f"{hit.phrase!r} (score {hit.score:.0f}): {sentence}")
    # What the scripts tell agents to say must not trip an agent-side warning.
    agent_categories = {c.id for c in playbook.categories if c.speaker == "agent"}
    if agent_categories:
        for cat in playbook.categories:
            for phrase in cat.key_phrases:
                for m in matcher.match(phrase, "agent"):
                    problems.append(f"category {cat.id}: key phrase {phrase!r} fires agent category "
                                    f"{m.category.id} via {m.phrase!r}")
    return problems


def _check_intent_model(playbook: Playbook) -> list[str]:
    """The intent model must know exactly the playbook's categories and have been
    trained on the corpus as it is now (else it is rebuilt with prompts.intent_train)."""
    from prompts.corpus import CorpusError, corpus_digest, train_dev
    from prompts.intent import IntentModel, IntentModelError
    rebuild = "rebuild it with 'python -m prompts.intent_train'"
    try:
        model = IntentModel.load()
        train, dev = train_dev(playbook)
    except (IntentModelError, CorpusError) as exc:
        return [str(exc)]
    problems = []
    for speaker in ("customer", "agent"):
        expected = [c.id for c in playbook.categories if c.speaker == speaker]
        if model.categories(speaker) != expected:
            problems.append(f"intent model: {speaker} categories differ from the playbook's; {rebuild}")
    if model.meta.get("corpus") != corpus_digest(train + dev):
        problems.append(f"intent model: trained on another version of the corpus or playbook "
                        f"phrases; {rebuild}")
    return problems


def check_playbook(playbook: Playbook, legal_md: Path | None = None, *, threshold: float = 86,
                   use_pinyin: bool = True, match_examples: bool = True,
                   intent_model: bool = False, notes: list[str] | None = None) -> list[str]:
    """Every problem found in an already loaded playbook, one line each.

    `legal_md` defaults to <project>/../shared/domain/legal-citations.md; checks that
    could not run (no legal table, no matcher) are described in `notes` when given.
    """
    notes = notes if notes is not None else []
    problems = _check_ids(playbook)
    problems += _check_category_fields(playbook)
    problems += _check_duplicates(playbook)
    problems += _check_citations(playbook, legal_md or LEGAL_TABLE, notes)
    if match_examples:
        problems += _check_examples(playbook, threshold, use_pinyin, notes)
    if intent_model:
        problems += _check_intent_model(playbook)
    return problems


def check_files(playbook_path: Path = PLAYBOOK_FILE, citations_path: Path = CITATIONS_FILE,
                legal_md: Path | None = None, **options) -> list[str]:
    """Load and check; structural problems (the loader's) are returned, not raised."""
    try:
        playbook = load_playbook(playbook_path, citations_path)
    except PlaybookError as exc:
        return list(exc.problems)
    return check_playbook(playbook, legal_md, **options)


def _matcher_settings(args, notes: list[str]) -> tuple[float, bool]:
    """Threshold and pinyin switch of the configuration in use, else the defaults."""
    from callassist.config import ConfigError, load_config
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        notes.append(f"configuration not usable ({len(exc.problems)} problem(s), see "
                     f"`callassist config check`): examples checked with threshold 86, pinyin on")
        return 86.0, True
    return float(config.matcher.threshold), bool(config.matcher.pinyin)


def run(args) -> int:
    notes: list[str] = []
    threshold, use_pinyin = _matcher_settings(args, notes)
    try:
        playbook = load_playbook()
    except PlaybookError as exc:
        problems = list(exc.problems)
    else:
        problems = check_playbook(playbook, threshold=threshold, use_pinyin=use_pinyin,
                                  intent_model=True, notes=notes)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    phrases = sum(len(c.phrases) for c in playbook.categories)
    examples = sum(len(c.examples) + len(c.counter_examples) for c in playbook.categories)
    print(f"ok: {len(playbook.categories)} categories, {phrases} phrases, "
          f"{len(playbook.citations)} citations, {examples} examples checked "
          f"(threshold {threshold:g}, pinyin {'on' if use_pinyin else 'off'}); "
          f"the intent model matches the corpus")
    return 0
