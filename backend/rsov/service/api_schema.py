"""The committed HTTP contract, ``docs/api/openapi.json``: what the server serves at ``/openapi.json``.

Regenerate it after changing a route or a body (``make api-schema``, ``rsov api-schema --out
docs/api/openapi.json`` or ``python -m rsov.service.api_schema --out docs/api/openapi.json``);
``tests/test_api_schema.py`` fails while the committed file and the served schema differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .openapi import COMMITTED, dump

REGENERATE = f"make api-schema (or: rsov api-schema --out {COMMITTED})"


def api_schema() -> dict[str, Any]:
    """The schema, from the routes alone: no engine, token or machine-specific setting enters it."""
    from .app import build_app

    return build_app().openapi()


def write_api_schema(out: Path | None = None) -> None:
    """The schema's committed text, into ``out`` (standard output without it)."""
    text = dump(api_schema())
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsov.service.api_schema", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help=f"write it to this file (e.g. {COMMITTED}) instead of standard output")
    parser.add_argument("--check", type=Path, metavar="FILE", help="only compare with FILE: exit 1 when it differs")
    args = parser.parse_args(argv)
    if args.check is not None:
        same = args.check.is_file() and args.check.read_text(encoding="utf-8") == dump(api_schema())
        if not same:
            print(f"{args.check} is not the current API schema: regenerate it with {REGENERATE}.", file=sys.stderr)
        return 0 if same else 1
    write_api_schema(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
