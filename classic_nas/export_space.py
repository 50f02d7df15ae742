"""Write the search-space JSON that nnictl reads, generated from :class:`MobileNetSkipSpace`.

    python -m classic_nas.export_space            # rewrites classic_nas/search_space.json
    python -m classic_nas.export_space --check    # exit 1 if that file is out of date
    python -m classic_nas.export_space --out -    # print it

An existing ``--out`` file is replaced only when it holds a search space of this stage (one
``{"_type": ..., "_value": ...}`` per skip label: an earlier or stale export); any other file is
refused, and left as it is, unless ``--overwrite`` is given.

The JSON holds one ``{"_type": "choice", "_value": [0, 1]}`` per skip label, in NNI's HPO format;
the tuner's parameters are then exactly this stage's architecture format (``{"skip1": 0 or 1, ...}``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from core.files import add_overwrite_argument, atomic_write_text, check_output_file
from core.config import parse_json
from core.errors import ArgumentParser, cli_main

#: The file the nnictl configs of this stage name as ``searchSpaceFile``.
SEARCH_SPACE_FILE = Path(__file__).resolve().parent / "search_space.json"


def render(space_json: dict[str, Any]) -> str:
    """One label per line."""
    lines = [f"  {json.dumps(label)}: {json.dumps(spec)}" for label, spec in space_json.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m classic_nas.export_space", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(SEARCH_SPACE_FILE),
                        help="where to write it ('-' = standard output; default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --out differs from the generated JSON")
    add_overwrite_argument(parser)
    return parser


def holds_space(text: str) -> bool:
    """Whether ``text`` is what this command writes: a search space over this stage's skip labels
    (perhaps a stale one, with only some of them or other choices)."""
    from classic_nas.space import SKIP_LABELS

    space = parse_json(text)
    return (isinstance(space, dict) and bool(space)
            and all(label in SKIP_LABELS and isinstance(spec, dict) and set(spec) == {"_type", "_value"}
                    for label, spec in space.items()))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from classic_nas.space import search_space_json
    text = render(search_space_json())
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if args.check:
        try:
            current = parse_json(out.read_text()) if out.is_file() else None
        except (ValueError, RecursionError):  # not JSON, not text, a repeated key: certainly not the generated space
            current = None
        if current != json.loads(text):
            print(f"{out} is out of date: run python -m classic_nas.export_space", file=sys.stderr)
            raise SystemExit(1)
        print(f"{out} matches the search space")
        return 0
    check_output_file(out, "--out", "a search space of this stage", holds_space, args.overwrite)
    atomic_write_text(out, text)
    print(f"wrote {out} ({len(json.loads(text))} choices)")
    return 0


if __name__ == "__main__":
    main()
