"""One colour per method in every figure (loss curves, attention maps, alignment), so a
method is recognised at a glance from one panel to the next."""

from __future__ import annotations

import zlib

METHOD_COLOURS = {
    "text-pretrain": "#7f7f7f",  # grey: the shared starting point
    "bart": "#1f77b4",  # blue: lyrics only
    "bart-fusion": "#ff7f0e",  # orange: + music fusion
    "alcap": "#2ca02c",  # green: + contrastive alignment
}
_OTHER_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def method_of(name: str) -> str:
    """"alcap seed-2020" -> "alcap": a run's label without its seed."""
    return name.split(" ")[0]


def method_colour(name: str) -> str:
    """The method's colour; any other name gets one of the remaining colours, the same every time."""
    method = method_of(name)
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _OTHER_COLOURS[zlib.crc32(method.encode("utf-8")) % len(_OTHER_COLOURS)]
