"""Command line: every :class:`Config` field is a ``--flag`` (underscores become dashes).

python -m examples.sela_train --epochs 40 --label-steps 16 --out-dir runs/sela
python -m examples.sela_train --mode fixed --labels-from runs/sela/labels/final.npz --label-steps 0
torchrun --nproc_per_node=4 -m examples.sela_train --dataset cifar10 --data-root ~/data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .config import Config

_DEFAULT = "default: %(default)s"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.sela_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = hints[f.name]
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_DEFAULT)
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            p.add_argument(
                flag, type=item, nargs="+", default=default, metavar=item.__name__.upper(), help=_DEFAULT
            )
        elif tp is dict:
            p.add_argument(flag, type=json.loads, default=default, metavar="JSON", help=_DEFAULT)
        else:
            p.add_argument(flag, type=tp, default=default, help=_DEFAULT)
    return p


def parse(argv=None) -> Config:
    ns = vars(_parser().parse_args(argv))
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()})


def main(argv=None) -> int:
    from .train import StopRequested, run

    cfg = parse(argv)
    try:
        run(cfg)
    except StopRequested as e:
        print(e, file=sys.stderr)
        return 3
    return 0
