"""Command line: ``python -m helpers evaluate --dataset demo --backbone efficientnet_lite0 --method gem``
and ``python -m helpers compare --dataset demo --methods gem,mac,rmac``.

The last printed line is the result: ``mAP_E=… mAP_M=… mAP_H=…`` on revisited datasets (the demo
sets, ROxford5k, RParis6k), ``mAP=…`` otherwise (UKBench: ``NS=… mAP=…``), in percent.
Method options go through ``--option KEY=VALUE`` (repeatable), e.g. ``--option whiten=true``; their
kinds are the methods' declared ones (:mod:`helpers.options`), and a wrong one is one ``error:`` line
with exit status 2. ``compare`` prints each method's mAP and, for every method after the first, one
line ``b vs a: diff=-3.21 ci=[-6.10,-0.40] p=0.031 verdict=worse`` (per-query AP differences, medium
setting on revisited data; 95% paired bootstrap interval; sign-flip p-value; see
:func:`helpers.evaluate.paired_comparison`).
"""
from __future__ import annotations

import argparse
import pickle
import sys
import warnings


def _parse_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value text); the method's declared option kinds convert the text
    (:func:`helpers.options.validate_options`)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _image_size(text: str) -> int:
    from .images import check_image_size

    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        return check_image_size(value, "--image-size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _method_list(text: str) -> list[str]:
    """Comma-separated method labels (a method name, or ``NAME+whiten``); ``all`` is the summary
    chapter's rows (:data:`helpers.methods.STANDARD_ROWS`)."""
    from .methods import STANDARD_ROWS, available_methods, resolve_method_label

    names = list(STANDARD_ROWS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = []
    for name in names:
        try:
            resolve_method_label(name)
        except ValueError:
            unknown.append(name)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; choose from {','.join(available_methods())} "
                                         f"(optionally NAME+whiten) or all")
    return list(dict.fromkeys(names))


def _run_compare(args) -> None:
    from .evaluate import format_result
    from .methods import compare_methods

    out = compare_methods(args.dataset, args.methods, args.backbone, args.image_size, args.train_dataset,
                          args.option)
    first = args.methods[0]
    for name, result in out["results"].items():
        print(f"{name}: {format_result(result)}")
    for name, comparison in out["comparisons"].items():
        print(comparison.line(name, first))


def build_parser() -> argparse.ArgumentParser:
    from .backbones import KNOWN_BACKBONES
    from .methods import available_methods

    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="evaluate a method on a dataset")
    ev.add_argument("--dataset", required=True, help="demo, folder:PATH, oxford5k, paris6k, roxford5k, "
                    "rparis6k, holidays or ukbench")
    ev.add_argument("--backbone", default="efficientnet_lite0", choices=KNOWN_BACKBONES)
    ev.add_argument("--method", default="gem", choices=available_methods())
    ev.add_argument("--image-size", type=_image_size, default=None,
                    help="long side in pixels (default: 512 for the demo sets, 1024 otherwise)")
    ev.add_argument("--train-dataset", default=None,
                    help="dataset to learn whitening / heads on (default: a disjoint one)")
    ev.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                    help="method option, repeatable")
    cmp = sub.add_parser("compare", help="compare methods on the same queries (paired bootstrap)")
    cmp.add_argument("--dataset", required=True, help="as for evaluate")
    cmp.add_argument("--methods", required=True, type=_method_list,
                     help=f"comma-separated, the first is the reference ({','.join(available_methods())}; "
                     "NAME+whiten for a PCA-whitened one); or 'all', the summary chapter's rows")
    cmp.add_argument("--backbone", default="efficientnet_lite0", choices=KNOWN_BACKBONES)
    cmp.add_argument("--image-size", type=_image_size, default=None, help="as for evaluate")
    cmp.add_argument("--train-dataset", default=None, help="as for evaluate")
    cmp.add_argument("--option", action="append", type=_parse_option, default=[], metavar="[METHOD.]KEY=VALUE",
                     help="method option, repeatable; a plain KEY goes to every method that declares it")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        from .evaluate import format_result
        from .methods import evaluate_method

        warnings.simplefilter("default")
        try:
            results = evaluate_method(args.dataset, args.backbone, args.method, args.image_size,
                                      args.train_dataset, **dict(args.option))
        except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
            # wrong options, missing or damaged data, refused pickles, missing weights: one line
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"dataset={results['dataset']} backbone={results['backbone']} method={results['method']} "
              f"image_size={results['image_size']} train_dataset={results['train_dataset']}")
        if results.get("unreadable"):
            listing = "; ".join(f"{u['path']} ({u['reason']})" for u in results["unreadable"])
            print(f"left out of the evaluation: {len(results['unreadable'])} unreadable images: {listing}")
        print(format_result(results))
        return 0
    if args.command == "compare":
        warnings.simplefilter("default")
        try:
            _run_compare(args)
        except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    return 1
