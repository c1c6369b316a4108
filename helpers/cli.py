"""Command line: ``python -m helpers evaluate --dataset demo --backbone efficientnet_lite0 --method gem``.

The last printed line is the result: ``mAP_E=… mAP_M=… mAP_H=…`` on revisited datasets (the demo
sets, ROxford5k, RParis6k), ``mAP=…`` otherwise (UKBench: ``NS=… mAP=…``), in percent.
Method options go through ``--option KEY=VALUE`` (repeatable), e.g. ``--option whiten=true``.
"""
from __future__ import annotations

import argparse
import ast
import sys
import warnings


def _parse_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    if lowered == "none":
        return key.strip(), None
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    from .backbones import BACKBONES
    from .methods import available_methods

    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="evaluate a method on a dataset")
    ev.add_argument("--dataset", required=True, help="demo, folder:PATH, oxford5k, paris6k, roxford5k, "
                    "rparis6k, holidays or ukbench")
    ev.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES)
    ev.add_argument("--method", default="gem", choices=available_methods())
    ev.add_argument("--image-size", type=int, default=None,
                    help="long side in pixels (default: 640 for the demo sets, 1024 otherwise)")
    ev.add_argument("--train-dataset", default=None,
                    help="dataset to learn whitening / heads on (default: a disjoint one)")
    ev.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                    help="method option, repeatable")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        from .evaluate import format_result
        from .methods import evaluate_method

        if args.image_size is not None and args.image_size < 32:
            parser.error(f"--image-size must be at least 32, got {args.image_size}")
        warnings.simplefilter("default")
        try:
            results = evaluate_method(args.dataset, args.backbone, args.method, args.image_size,
                                      args.train_dataset, **dict(args.option))
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"dataset={results['dataset']} backbone={results['backbone']} method={results['method']} "
              f"image_size={results['image_size']} train_dataset={results['train_dataset']}")
        print(format_result(results))
        return 0
    return 1
