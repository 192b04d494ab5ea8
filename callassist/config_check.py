"""`callassist config check`: validate a configuration file and say what is wrong."""
from __future__ import annotations

import sys

from callassist.config import ConfigError, load_config


def run(args) -> int:
    path = args.file or args.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    ari = config.ari.url or "none (demo mode)"
    print(f"ok: {config.source}; Asterisk: {ari}; engine: {config.asr.engine}; "
          f"web: http{'s' if config.web.tls_cert else ''}://{config.web.host}:{config.web.port}")
    return 0
