"""`callassist models install [name] [--archive ZIP] [--dest DIR]`: install a Vosk Chinese model.

Downloads https://alphacephei.com/vosk/models/<name>.zip (or uses a local --archive),
checks it, unpacks it safely into DEST/<model dir> and prints the configuration line.
$CALLASSIST_VOSK_MODELS_URL replaces the download base URL (an internal mirror).

Checks, in order: the archive's checksums against the official ones when we know them;
that it is a zip with CRC-correct members; that no member escapes the destination (absolute
paths, "..", symlinks) and the total size is sane; that the result is a Vosk model
(am/final.mdl, conf/, graph). The model is unpacked into a temporary directory next to the
destination and renamed into place only when all checks pass, so a failed install leaves
nothing behind and never touches an existing model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from asr.models import VOSK_NAMES, default_search_dirs, vosk_model_problems

DEFAULT_BASE_URL = "https://alphacephei.com/vosk/models/"
MIRROR_ENV = "CALLASSIST_VOSK_MODELS_URL"
MAX_UNPACKED_BYTES = 8 << 30      # the large Chinese model unpacks to about 2 GB
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class OfficialArchive:
    size: int
    sha256: str
    source: str                # where the checksum comes from
    md5: str = ""              # from alphacephei's own model-list.json, when known
    corroborated: bool = True  # False: one source only, so a mismatch warns instead of refusing


# alphacephei publishes no SHA-256. The small model's value is pinned independently by several
# public projects (a Yocto recipe, Android apps) and its md5 and size are those in alphacephei's
# model-list.json (the list vosk's own downloader uses); the large model's comes from one project.
OFFICIAL_ARCHIVES = {
    "vosk-model-small-cn-0.22": OfficialArchive(
        43_898_754, "3af8b0e7e0f835ae9d414ce5df580237a3cfb08d586c9fbbb0f7ff29ad5b14ba",
        "pinned by several public projects; md5 and size from alphacephei's model-list.json",
        md5="d1a8e82933dcc7632667c036b0bb3dbb"),
    "vosk-model-cn-0.22": OfficialArchive(
        1_358_736_686, "7f5580bf7ca3d9e8ce8be68337378950ed78ef974df7a7d4ead8dbe32bec2fa1",
        "pinned by one public Android project that downloaded it from alphacephei.com",
        corroborated=False),
}


class InstallError(Exception):
    """A problem the user can act on; the message says what to do."""


def run(args) -> int:
    name: str = args.name
    dest = Path(args.dest)
    try:
        installed = install(name, dest, Path(args.archive) if args.archive else None)
    except InstallError as exc:
        print(f"callassist models install: error: {exc}", file=sys.stderr)
        return 1
    print(f"Vosk model ready: {installed}")
    print("Use it with this line in the [asr] section of your configuration file:")
    print(f"vosk_model = {json.dumps(str(installed.resolve()), ensure_ascii=False)}")
    searched = {d.resolve() for d in default_search_dirs()}
    if installed.name in VOSK_NAMES and installed.parent.resolve() in searched:
        print(f"({installed.parent} is searched automatically, so an empty vosk_model finds it too.)")
    return 0


def install(name: str, dest: Path, archive: Path | None = None) -> Path:
    """Install model `name` into `dest` from `archive` (or a download); returns its directory."""
    existing = dest / name
    if archive is None and existing.exists():
        if not vosk_model_problems(existing):
            _note(f"{existing} is already installed")
            return existing
        raise InstallError(f"{existing} exists but is not a valid Vosk model "
                           f"({'; '.join(vosk_model_problems(existing))}); remove it first")
    if archive is not None and not archive.is_file():
        raise InstallError(f"archive {archive} not found")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    downloaded = archive is None
    try:
        if archive is None:
            archive = _download(name, dest)
        _verify_checksum(name, archive, downloaded)
        return _unpack(archive, dest, name)
    finally:
        if downloaded and archive is not None:
            archive.unlink(missing_ok=True)
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()  # a failed install into a new directory leaves nothing behind


def _note(message: str) -> None:
    print(message, file=sys.stderr)


# -- download ------------------------------------------------------------------------

def model_url(name: str) -> str:
    base = os.environ.get(MIRROR_ENV) or DEFAULT_BASE_URL
    return base.rstrip("/") + f"/{name}.zip"


def _download(name: str, dest: Path) -> Path:
    url = model_url(name)
    part = dest / f".{name}.zip.part"
    offline_hint = (f"If this machine cannot reach {url}, download the file on another machine "
                    f"and run: callassist models install {name} --archive /path/to/{name}.zip")
    _note(f"Downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            _copy_with_progress(response, out, total)
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise InstallError(f"download of {url} failed: HTTP {exc.code} {exc.reason}. {offline_hint}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise InstallError(f"download of {url} failed: {reason}. {offline_hint}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def _copy_with_progress(source: BinaryIO, out: BinaryIO, total: int) -> None:
    done, last_report = 0, 0.0
    interactive = sys.stderr.isatty()
    cr = "\r" if interactive else ""   # redraw one line on a terminal, plain lines in logs
    while chunk := source.read(1 << 20):
        out.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last_report >= (0.5 if interactive else 5.0):
            last_report = now
            share = f" ({100 * done / total:.0f}%)" if total else ""
            print(f"{cr}  {done / 1e6:.1f} MB{share}",
                  end="" if interactive else "\n", file=sys.stderr, flush=True)
    if total and done != total:
        raise OSError(f"connection closed after {done} of {total} bytes")
    print(f"{cr}  {done / 1e6:.1f} MB done", file=sys.stderr)


# -- checks --------------------------------------------------------------------------

def digests_of(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, in one read."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def _verify_checksum(name: str, archive: Path, downloaded: bool) -> None:
    official = OFFICIAL_ARCHIVES.get(name)
    if official is None:
        _note(f"No known checksum for {name}: checking zip integrity and model structure only")
        return
    size = archive.stat().st_size
    actual, md5 = digests_of(archive) if size == official.size else (None, None)
    if actual == official.sha256 and (not official.md5 or md5 == official.md5):
        _note(f"Checksum verified: this is the official {name} archive")
        return
    found = f"sha256 {actual}" if actual else f"{size} bytes, expected {official.size}"
    if not official.corroborated:
        _note(f"WARNING: {archive.name} does not match the checksum we have for {name} ({found}); "
              f"that value is {official.source}, so it may be out of date. Checking zip integrity "
              "and model structure only")
        return
    if downloaded:
        raise InstallError(f"the downloaded {name}.zip is not the official archive ({found}); "
                           "the download is damaged or was tampered with. Try again, or fetch it "
                           "elsewhere and use --archive")
    if _top_directory(archive) == name:
        raise InstallError(f"{archive} claims to be {name} but is not the official archive ({found}): "
                           "damaged or modified. Download it again from " + DEFAULT_BASE_URL)
    _note(f"Note: {archive} is not the official {name} archive ({found}); "
          "checking zip integrity and model structure only")


def _top_directory(archive: Path) -> str | None:
    try:
        with zipfile.ZipFile(archive) as zf:
            tops = {PurePosixPath(info.filename).parts[0] for info in zf.infolist() if info.filename.strip("/")}
    except (zipfile.BadZipFile, OSError):
        return None
    return tops.pop() if len(tops) == 1 else None


def _safe_members(zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member with its relative path; refuses anything that could land outside."""
    members, total = [], 0
    for info in zf.infolist():
        raw = info.filename
        path = PurePosixPath(raw.replace("\\", "/"))
        if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":") or ".." in path.parts:
            raise InstallError(f"refusing archive: member {raw!r} would be written outside the destination")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise InstallError(f"refusing archive: member {raw!r} is a symbolic link")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise InstallError(f"refusing archive: it unpacks to more than {MAX_UNPACKED_BYTES >> 30} GB")
        if path.parts:
            members.append((info, path))
    return members


def _unpack(archive: Path, dest: Path, name: str) -> Path:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InstallError(f"{archive} is not a zip archive ({exc})") from None
    with zf:
        members = _safe_members(zf)
        if not members:
            raise InstallError(f"{archive} is empty")
        tops = {path.parts[0] for _, path in members}
        nested = len(tops) == 1 and any(len(path.parts) > 1 for _, path in members)
        model_name = tops.pop() if nested else name
        target = dest / model_name
        if target.exists():
            raise InstallError(f"{target} already exists; remove it first or choose another --dest")
        staging = Path(tempfile.mkdtemp(prefix=f".{model_name}.", dir=dest))
        try:
            for info, path in members:
                out = staging.joinpath(*path.parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, out.open("wb") as sink:  # CRC checked on read
                    shutil.copyfileobj(source, sink, 1 << 20)
            root = staging / model_name if nested else staging
            problems = vosk_model_problems(root)
            if problems:
                raise InstallError(f"{archive} does not contain a Vosk model: {'; '.join(problems)}")
            os.rename(root, target)
        except zipfile.BadZipFile as exc:
            raise InstallError(f"{archive} is damaged: {exc}") from None
        except OSError as exc:
            raise InstallError(f"cannot unpack into {dest}: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
