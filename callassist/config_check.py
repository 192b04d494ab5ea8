"""`callassist config check`: validate a configuration file and say what is wrong, including
what only shows at start-up: a mistyped CALLASSIST_* variable and a speech model the
configured engines cannot find."""
from __future__ import annotations

import sys

from callassist.config import DATA_DIR_SETTING, Config, ConfigError, load_config


def model_problems(config: Config) -> tuple[list[str], str]:
    """Problems with the models the configured engines need, and how the live engine reads
    (e.g. 'auto -> whisper'). Looks on disk only: nothing is loaded or assembled."""
    from asr import choose_engine
    from asr.engine import ModelNotFoundError
    from asr.models import find_model, is_model_kind, whisper_packages_installed

    problems: list[str] = []
    live = config.asr.engine
    described = live
    if live == "auto":
        live, why = choose_engine(config)
        described = f"auto -> {live}" + (" (no Vosk Chinese model found)" if why else "")
    needed = {live: f"[asr] engine = {config.asr.engine!r}"}
    if config.asr.post_call_engine:
        needed.setdefault(config.asr.post_call_engine, f"[asr] post_call_engine = {config.asr.post_call_engine!r}")
    for kind, setting in needed.items():
        if not is_model_kind(kind):       # cannot pass load_config's check of [asr]
            problems.append(f"{setting}: not a speech engine")
            continue
        try:
            find_model(kind, getattr(config.asr, f"{kind}_model"), use_packages=False)
        except ModelNotFoundError as exc:
            if kind == "whisper" and not config.asr.whisper_model and whisper_packages_installed():
                continue           # assembled from the PyPI wheels on first use
            problems.append(f"{setting}: {exc}")
    return problems, described


def run(args) -> int:
    path = args.file or args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    models, engine = model_problems(config)
    problems = list(config.warnings) + models
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    ari = config.ari.url or "none (demo mode)"
    print(f"ok: {config.source}; Asterisk: {ari}; engine: {engine}; "
          f"web: http{'s' if config.web.tls_cert else ''}://{config.web.host}:{config.web.port}; "
          f"data: {config.data_dir} ({DATA_DIR_SETTING})")
    return 0
