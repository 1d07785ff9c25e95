#!/usr/bin/env python3
"""The values table of deploy/helm/paystream/README.md, generated from values.yaml.

Each value's description is the comment block right above its key in values.yaml; a map whose
entries carry no comments of their own (resources, security contexts) is one row. Every row
needs a description. The table sits between the README's `<!-- values:begin -->` and
`<!-- values:end -->` markers.

  scripts/chart-readme.py          rewrite the table
  scripts/chart-readme.py --check  exit 1 when the table differs from values.yaml (make chart-check)
"""

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "paystream"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")


def comments_by_path(lines):
    """Dotted key path -> the comment block right above the key."""
    out, stack, block = {}, [], []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if not text.startswith("----"):  # section separators describe nothing
                block.append(text)
            continue
        m = KEY.match(line)
        if m and not stripped.startswith("-"):
            depth = len(m.group(1)) // 2
            stack = stack[:depth] + [m.group(2)]
            if block:
                out[".".join(stack)] = " ".join(t for t in block if t)
        block = []
    return out


def rows(values, comments, prefix=""):
    for key, value in values.items():
        path = f"{prefix}{key}"
        has_commented_children = any(p.startswith(path + ".") for p in comments)
        if isinstance(value, dict) and value and has_commented_children:
            yield from rows(value, comments, path + ".")
        else:
            yield path, value, comments.get(path)


def cell(text, code=False):
    text = text.replace("|", "\\|")
    return text if code else text.replace("<", "&lt;").replace(">", "&gt;")


def table():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    comments = comments_by_path(text.splitlines())
    lines = ["| value | default | description |", "|---|---|---|"]
    missing = []
    for path, value, description in rows(values, comments):
        if not description:
            missing.append(path)
            continue
        default = json.dumps(value, separators=(", ", ": "))
        lines.append(f"| `{path}` | `{cell(default, code=True)}` | {cell(description)} |")
    if missing:
        sys.exit("values.yaml: no comment describes " + ", ".join(missing))
    return "\n".join(lines)


def main():
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    if BEGIN not in readme or END not in readme:
        sys.exit(f"{readme_path}: no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv[1:]:
        if updated != readme:
            print(f"{readme_path} is not what values.yaml gives: run scripts/chart-readme.py")
            sys.exit(1)
        return
    readme_path.write_text(updated)


if __name__ == "__main__":
    main()
