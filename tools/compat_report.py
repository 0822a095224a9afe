"""Validate every config under a folder and count the outcomes by error class.

    python tools/compat_report.py ../shared/compat/axolotl-examples [--details]

Each config is validated in-process (as `gym validate` does); a config that fails reports each problem's
class: unknown key, not supported yet, renamed, unknown dataset type, bad value, missing key. A Python
traceback (anything that is not a gym error) is counted as a crash, which must never happen.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

from gym.config import load_config
from gym.errors import GymError


def classify(problem: str) -> str:
    message = problem.split(": ", 1)[-1] if ": " in problem else problem
    if any(m in message for m in ("not supported by gym yet", "is not installed in gym", "not built into gym")):
        return "not supported yet"
    if message.startswith("renamed"):
        return "renamed"
    if "unknown dataset type" in message:
        return "unknown dataset type"
    if "unknown key" in message or "not accepted here" in message:
        return "unknown key"
    if "required key" in message:
        return "missing key"
    return "bad value / rule"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--details", action="store_true")
    args = parser.parse_args()
    files = sorted(p for p in Path(args.folder).rglob("*") if p.suffix in (".yml", ".yaml"))
    valid, crashes = [], []
    failing: dict[str, list[str]] = {}
    problem_counts: collections.Counter = collections.Counter()
    config_classes: collections.Counter = collections.Counter()
    keys: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for path in files:
        try:
            load_config(path, notes=[])
            valid.append(path)
        except GymError as exc:
            problems = exc.problems or [exc.message]
            failing[str(path)] = problems
            classes = {classify(p) for p in problems}
            for p in problems:
                cls = classify(p)
                problem_counts[cls] += 1
                key = re.split(r"[ (:]", p.strip(), maxsplit=1)[0]
                keys[cls][re.sub(r"\.\d+\.", ".N.", key)] += 1
            for cls in classes:
                config_classes[cls] += 1
        except Exception as exc:  # noqa: BLE001 - counting crashes is the point
            crashes.append((path, f"{type(exc).__name__}: {exc}"))
    print(f"{len(files)} configs: {len(valid)} valid, {len(failing)} rejected with a gym error, {len(crashes)} crashed")
    print("configs rejected, by error class (a config may have several):")
    for cls, n in config_classes.most_common():
        top = ", ".join(f"{k} ({c})" for k, c in keys[cls].most_common(8))
        print(f"  {cls}: {n} configs, {problem_counts[cls]} problems; most common: {top}")
    for path, err in crashes:
        print(f"CRASH {path}: {err}")
    if args.details:
        for path, problems in failing.items():
            print(path)
            for p in problems:
                print("   ", p)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
