"""Generate the embedded demo datasets "demo" and "demo-train" (no download needed).

    python data_scripts/make_demo.py [--root DIR] [--seed N] [--force]

Writes ``<root>/demo/`` (default root: ``$INSTRET_DATA`` or ``<repo>/data``) from the photographs
bundled with scikit-image: "demo" (310 database images: 14 instances x 15 views + 100
distractors; 70 queries, 5 per instance) and "demo-train" (120 database images: 12 other
instances x 8 views + 24 distractors; 60 queries), 512x384 or 384x512 JPEGs, about 40 s of CPU
time. See ``helpers/demo_dataset.py`` for what is generated and how. An intact set with the same
seed is kept unless ``--force`` is given; ``--verify`` only checks the set.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import demo_dataset  # noqa: E402
from helpers.data import data_root  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help=f"data root (default: {data_root()})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if an intact set with this seed exists")
    parser.add_argument("--verify", action="store_true",
                        help="only check the existing set against its manifest")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    root = args.root if args.root is not None else data_root()
    target = root / "demo"
    if args.verify:
        problems = demo_dataset.verify_demo(target, seed=args.seed)
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"{target}: {'intact' if not problems else 'NOT intact'}")
        return 1 if problems else 0
    started = time.perf_counter()
    if args.force:
        demo_dataset.generate_demo(root, seed=args.seed)
    else:
        demo_dataset.ensure_demo(root, seed=args.seed)
    print(f"demo datasets ready in {target} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
