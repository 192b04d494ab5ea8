"""The `callassist` command. Each subcommand lives in the module that owns its job;
this file only parses arguments and imports that module when the command runs
(so `callassist config check` does not load speech models)."""
from __future__ import annotations

import argparse
import importlib
import sys

# command path -> (module, function); each function takes the parsed args and returns an exit code
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("config", "check"): ("callassist.config_check", "run"),
    ("playbook", "check"): ("prompts.check", "run"),
    ("models", "install"): ("asr.install", "run"),
    ("analyze",): ("callassist.analyze", "run"),
    ("eval",): ("prompts.evaluate", "run"),
    ("eval-calls",): ("prompts.evaluate", "run_calls"),
    ("eval-techniques",): ("prompts.evaluate_techniques", "run"),
    ("serve",): ("callassist.serve", "run"),
    ("demo",): ("callassist.serve", "run_demo"),
    ("user", "add"): ("agent_ui.users_cli", "add"),
    ("user", "list"): ("agent_ui.users_cli", "list_users"),
    ("user", "remove"): ("agent_ui.users_cli", "remove"),
    ("user", "passwd"): ("agent_ui.users_cli", "passwd"),
    ("user", "role"): ("agent_ui.users_cli", "role"),
    ("user", "endpoints"): ("agent_ui.users_cli", "endpoints"),
    ("user", "disable"): ("agent_ui.users_cli", "disable"),
    ("user", "enable"): ("agent_ui.users_cli", "enable"),
    ("user", "sessions"): ("agent_ui.users_cli", "sessions"),
    ("user", "logout"): ("agent_ui.users_cli", "logout"),
    ("user", "audit"): ("agent_ui.users_cli", "audit"),
    ("archive", "import"): ("agent_ui.archive_cli", "import_files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callassist", description="Real-time agent assist for Asterisk call centres")
    parser.add_argument("--config", help="configuration file (default: $CALLASSIST_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    check = config.add_parser("check", help="validate a configuration file")
    check.add_argument("file", nargs="?", help="file to check (default: the one in use)")

    playbook = sub.add_parser("playbook", help="the complaint playbook").add_subparsers(dest="action", required=True)
    playbook.add_parser("check", help="validate prompts/playbook.toml and its citations")

    models = sub.add_parser("models", help="speech models").add_subparsers(dest="action", required=True)
    install = models.add_parser("install", help="install a Vosk Chinese model")
    install.add_argument("name", nargs="?", default="vosk-model-small-cn-0.22",
                         choices=["vosk-model-small-cn-0.22", "vosk-model-cn-0.22"])
    install.add_argument("--archive", help="install from a local .zip instead of downloading")
    install.add_argument("--dest", default="models", help="directory to install into (default: ./models)")

    analyze = sub.add_parser("analyze", help="transcribe a recording (or read a transcript) and mark complaint triggers")
    analyze.add_argument("file", help="a recording, or a transcript: .json (analyze's output), "
                                      ".tsv (speaker<TAB>[start<TAB>end<TAB>]text), .vtt (<v speaker>), .txt")
    analyze.add_argument("--engine", choices=["vosk", "whisper"],
                         help="default: [asr] post_call_engine (whisper), the accurate pass")
    analyze.add_argument("--model", help="model directory")
    analyze.add_argument("--format", choices=["json", "vtt", "text"], default="json")
    analyze.add_argument("--channels", choices=["customer-agent", "agent-customer"], default="customer-agent",
                         help="which speaker is on the left/right channel of a stereo file")
    analyze.add_argument("--no-pinyin", action="store_true", help="match characters only (for comparison)")
    analyze.add_argument("--output", "-o", help="write here instead of standard output")
    analyze.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("eval", help="score the complaint recogniser on a labelled corpus "
                                           "(default: the blind test set)")
    evaluate.add_argument("files", nargs="*", metavar="FILE",
                          help="labels<TAB>speaker<TAB>text files (default prompts/corpus/blind.tsv)")
    evaluate.add_argument("--phrases-only", action="store_true",
                          help="the phrase matcher alone, without the intent model")
    evaluate.add_argument("--noisy", type=int, default=0, metavar="N",
                          help="also score N ASR-noised copies of every line")
    evaluate.add_argument("--details", action="store_true", help="list every miss and false trigger")
    eval_calls = sub.add_parser("eval-calls", help="score the call-level reading (complaint type, customer "
                                                   "type, interest) on labelled whole calls")
    eval_calls.add_argument("files", nargs="*", metavar="FILE",
                            help="labelled calls, JSON lines (default: prompts/corpus/calls_dev.jsonl "
                                 "and, when present, calls_blind.jsonl)")
    eval_calls.add_argument("--details", action="store_true", help="list every call read wrong")
    techniques = sub.add_parser("eval-techniques", help="score the technique adherence recogniser (QA) "
                                                        "per technique (default: the dev set, and the blind sets when present)")
    techniques.add_argument("files", nargs="*", metavar="FILE",
                            help="technique<TAB>label<TAB>context<TAB>text files")
    techniques.add_argument("--calls", nargs="*", metavar="FILE", default=None,
                            help="JSON-lines files of whole labelled calls (default prompts/corpus/calls_blind.jsonl when present)")
    techniques.add_argument("--details", action="store_true", help="list every wrong verdict")
    serve = sub.add_parser("serve", help="run the ARI application and the web app")
    demo = sub.add_parser("demo", help="run the web app and play a sample complaint call through it")
    demo.add_argument("--once", action="store_true", help="play the demo call once (default: replay it)")
    for command in (serve, demo):
        command.add_argument("--port", type=int, help="web port (default: [web] port, $CALLASSIST_WEB_PORT)")
    serve.add_argument("--role", help="on several machines: ari, worker, web or a comma list of them "
                       "(default: [cluster] role, $CALLASSIST_CLUSTER_ROLE; \"all\" runs everything in one "
                       "process); docs/deployment.md")

    user = sub.add_parser("user", help="web users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user (asks for the password, or reads $CALLASSIST_PASSWORD)")
    add.add_argument("username")
    add.add_argument("--role", choices=["agent", "supervisor", "qa", "admin"], required=True)
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--endpoint", action="append", default=[], help="phone endpoint, e.g. PJSIP/1001 (repeatable)")
    user.add_parser("list", help="list users")
    remove = user.add_parser("remove", help="remove a user")
    remove.add_argument("username")
    passwd = user.add_parser("passwd", help="change a user's password (ends their sessions)")
    passwd.add_argument("username")
    role = user.add_parser("role", help="change a user's role (ends their sessions)")
    role.add_argument("username")
    role.add_argument("role", choices=["agent", "supervisor", "qa", "admin"])
    endpoints = user.add_parser("endpoints", help="replace an agent's endpoints (none: clear them)")
    endpoints.add_argument("username")
    endpoints.add_argument("endpoints", nargs="*", metavar="ENDPOINT", help="e.g. PJSIP/1001")
    for name, text in (("disable", "disable a user: refuse logins, end their sessions"),
                       ("enable", "enable a disabled user again"),
                       ("sessions", "list a user's live sessions"),
                       ("logout", "log a user out everywhere")):
        user.add_parser(name, help=text).add_argument("username")
    audit = user.add_parser("audit", help="the audit log: logins and user changes, oldest first")
    audit.add_argument("--user", help="only what this user did or had done to them")
    audit.add_argument("--limit", type=int, default=200, help="the latest N entries (default 200)")

    archive = sub.add_parser("archive", help="the recording archive").add_subparsers(dest="action", required=True)
    imp = archive.add_parser("import", help="analyse recordings and add them to the archive")
    imp.add_argument("files", nargs="+")
    imp.add_argument("--agent", default="", help="agent endpoint to file the calls under, e.g. PJSIP/1001")
    imp.add_argument("--engine", choices=["vosk", "whisper"], help="default: [asr] post_call_engine")
    imp.add_argument("--channels", choices=["customer-agent", "agent-customer"], default="customer-agent")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = (args.command,) + ((args.action,) if getattr(args, "action", None) else ())
    module_name, function = COMMANDS[path]
    if args.command == "user":
        _announce_data_dir(args)
    try:
        return int(getattr(importlib.import_module(module_name), function)(args) or 0)
    except KeyboardInterrupt:
        return 130


def _announce_data_dir(args: argparse.Namespace) -> None:
    """The user commands say which database they act on (on stderr: stdout stays the
    command's output): serve's, not the demo's, which has its own demo logins."""
    from callassist.config import DATA_DIR_SETTING, ConfigError, load_config
    try:
        data_dir = load_config(args.config).data_dir
    except ConfigError:
        return          # the command itself reports what is wrong with the configuration
    print(f"callassist: data directory {data_dir} ({DATA_DIR_SETTING}); its users log in to "
          f"`callassist serve` (`callassist demo` has its own demo users in {data_dir / 'demo'})",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
