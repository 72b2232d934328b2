"""Write (or check) the README tables that come from the code: every option, every error code.

    python tools/readme_tables.py          rewrite the tables in README.md
    python tools/readme_tables.py --check  exit 1 if README.md differs from the code (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

README = ROOT / "README.md"


def options_table() -> str:
    from sadtalker.options import option_specs

    rows = ["| option (API) | command line | default | range | what it does |", "|---|---|---|---|---|"]
    for spec in option_specs():
        default = spec.default
        if isinstance(default, tuple):
            default = " ".join(map(str, default)) or "none"
        elif default is None:
            default = "none"
        elif isinstance(default, bool):
            default = "on" if default else "off"
        rows.append(f"| `{spec.name}` | `{spec.flag}` | {default} | {spec.range_text.replace('|', ', ')} | "
                    f"{spec.help} |")
    return "\n".join(rows)


def errors_table() -> str:
    from sadtalker.errors import Terminated, all_errors

    rows = ["| code | exit status | what it means, what to do |", "|---|---|---|"]
    for error in [*all_errors(), Terminated]:
        status = getattr(error, "exit_status", "128 + signal (143 SIGTERM, 129 SIGHUP)")
        rows.append(f"| `{error.code}` | {status} | {error.advice} |")
    return "\n".join(rows)


TABLES = {"options": options_table, "errors": errors_table}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}-table:start -->\n)(.*?)(<!-- {name}-table:end -->)", re.S)


def render(text: str) -> str:
    for name, make in TABLES.items():
        pattern = _block(name)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}-table:start/end --> block")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(3), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            sys.stderr.write("README.md tables differ from the code; run python tools/readme_tables.py\n")
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
