"""The complaint playbook: categories, scripts and legal citations, loaded from data.

`prompts/playbook.toml` holds the categories; `prompts/citations.toml` holds each
legal citation once (copied from VERIFIED rows of the shared legal table), and
categories refer to citations by key. Where a law was renumbered, a citation key
may have several versions with `in_force_from` / `in_force_until`; the version in
force on the day of the call is shown.
"""
from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path

from callassist.events import CitationView, Severity, Speaker

PLAYBOOK_FILE = Path(__file__).with_name("playbook.toml")
CITATIONS_FILE = Path(__file__).with_name("citations.toml")
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
# How people read them: the names the web UI shows (agent_ui/static/js/common.js SEVERITIES),
# used wherever a severity appears in Chinese text (analyze --format text|vtt).
SEVERITY_LABELS: dict[str, str] = {"info": "提示", "warning": "警告", "critical": "严重"}


class PlaybookError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Citation:
    key: str
    law: str
    article: str
    quote: str
    source_row: str                 # row id in shared/domain/legal-citations.md, e.g. "1d"
    in_force_from: dt.date | None = None
    in_force_until: dt.date | None = None

    def in_force(self, day: dt.date) -> bool:
        return ((self.in_force_from is None or self.in_force_from <= day)
                and (self.in_force_until is None or day <= self.in_force_until))

    def view(self) -> CitationView:
        return CitationView(self.key, self.law, self.article, self.quote)


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    title: str
    severity: Severity
    speaker: Speaker
    phrases: tuple[str, ...]          # trigger phrases, colloquial variants
    exclude: tuple[str, ...]          # do-not-trigger phrases (e.g. 精神挺好)
    script: tuple[str, ...]           # short steps the agent reads mid-call
    key_phrases: tuple[str, ...]      # what an agent following the script is heard to say (QA)
    citations: tuple[str, ...]        # citation keys
    alert_supervisor: bool
    cooldown: float                   # seconds before the category may fire again on a call
    threshold: float | None           # overrides the matcher's default score
    examples: tuple[str, ...]         # sentences that must fire this category
    counter_examples: tuple[str, ...] # sentences that must not


@dataclass(frozen=True)
class Playbook:
    categories: tuple[Category, ...]
    citations: dict[str, tuple[Citation, ...]]   # key -> versions

    def category(self, category_id: str) -> Category:
        for cat in self.categories:
            if cat.id == category_id:
                return cat
        raise KeyError(category_id)

    def citation_views(self, category: Category, day: dt.date | None = None) -> tuple[CitationView, ...]:
        """The citations of a category as in force on `day` (today by default)."""
        day = day or dt.date.today()
        views: list[CitationView] = []
        for key in category.citations:
            versions = [c for c in self.citations.get(key, ()) if c.in_force(day)]
            views.extend(c.view() for c in versions[:1])
        return tuple(views)


def _tuple(value, where: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: must be a list of strings")
        return ()
    return tuple(value)


def _load_citations(path: Path, problems: list[str]) -> dict[str, tuple[Citation, ...]]:
    data = _read(path, problems)
    out: dict[str, tuple[Citation, ...]] = {}
    for key, entry in data.items():
        versions = entry["versions"] if isinstance(entry, dict) and "versions" in entry else [entry]
        if not isinstance(versions, list):
            problems.append(f"{path.name}: [{key}] versions: must be an array of tables")
            continue
        built: list[Citation] = []
        for i, version in enumerate(versions):
            where = f"{path.name}: [{key}]" + (f" version {i + 1}" if len(versions) > 1 else "")
            if not isinstance(version, dict):
                problems.append(f"{where}: must be a table")
                continue
            missing = [f for f in ("law", "article", "quote", "source_row") if not version.get(f)]
            if missing:
                problems.append(f"{where}: missing {', '.join(missing)}")
                continue
            built.append(Citation(key=key, law=version["law"], article=version["article"],
                                  quote=version["quote"], source_row=version["source_row"],
                                  in_force_from=version.get("in_force_from"),
                                  in_force_until=version.get("in_force_until")))
        out[key] = tuple(built)
    return out


def _read(path: Path, problems: list[str]) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
    return {}


def load_playbook(path: Path = PLAYBOOK_FILE, citations_path: Path = CITATIONS_FILE) -> Playbook:
    """Parse both files; raise PlaybookError listing every structural problem found."""
    problems: list[str] = []
    citations = _load_citations(citations_path, problems)
    data = _read(path, problems)
    defaults = data.get("defaults", {})
    categories = []
    for i, raw in enumerate(data.get("category", [])):
        cid = raw.get("id", f"#{i + 1}")
        where = f"{path.name}: category {cid}"
        severity = raw.get("severity", "")
        speaker = raw.get("speaker", "customer")
        if severity not in SEVERITIES:
            problems.append(f"{where}: severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        if speaker not in ("customer", "agent"):
            problems.append(f"{where}: speaker must be customer or agent, got {speaker!r}")
        if not raw.get("title"):
            problems.append(f"{where}: missing title")
        categories.append(Category(
            id=cid, title=raw.get("title", ""), severity=severity, speaker=speaker,
            phrases=_tuple(raw.get("phrases"), f"{where}: phrases", problems),
            exclude=_tuple(raw.get("exclude"), f"{where}: exclude", problems),
            script=_tuple(raw.get("script"), f"{where}: script", problems),
            key_phrases=_tuple(raw.get("key_phrases"), f"{where}: key_phrases", problems),
            citations=_tuple(raw.get("citations"), f"{where}: citations", problems),
            alert_supervisor=bool(raw.get("alert_supervisor", severity == "critical")),
            cooldown=float(raw.get("cooldown", defaults.get("cooldown", 60.0))),
            threshold=raw.get("threshold"),
            examples=_tuple(raw.get("examples"), f"{where}: examples", problems),
            counter_examples=_tuple(raw.get("counter_examples"), f"{where}: counter_examples", problems),
        ))
    if problems:
        raise PlaybookError(problems)
    return Playbook(categories=tuple(categories), citations=citations)
