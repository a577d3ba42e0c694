"""Boolean logic ``& | ^ ~`` on booleans, elementwise, with polars' Kleene semantics for nulls.

``False & null`` is False and ``True | null`` is True (the null could not change the result); every other
combination with a null is null. ``^`` and ``~`` are null if any input is. On numbers polars computes these
bitwise, so the operators take booleans only (compare first).

>>> kleene_and(0.0, True, 0.0, False), kleene_or(0.0, True, 0.0, False)
((0.0, True), (0.0, False))
"""

from __future__ import annotations

from featurestore.operators.base import Operator, kernel, logical, template

__all__ = ["OPERATORS", "kleene_and", "kleene_or", "kleene_xor"]


@kernel
def kleene_and(a, av, b, bv):
    if (av and a == 0.0) or (bv and b == 0.0):
        return 0.0, True
    return 1.0, av and bv


@kernel
def kleene_or(a, av, b, bv):
    if (av and a != 0.0) or (bv and b != 0.0):
        return 1.0, True
    return 0.0, av and bv


@kernel
def kleene_xor(a, av, b, bv):
    return (1.0 if (a != 0.0) != (b != 0.0) else 0.0), av and bv


def _kleene(name: str, polars: str, infix: str, function) -> Operator:
    return Operator(name, (polars,), logical, arguments=2, infix=infix,
                    code=template(f"{function.__name__}({{a}}, {{am}}, {{b}}, {{bm}})"), kernels=(function,),
                    write=lambda a, b: getattr(a, f"__{name}__")(b))


OPERATORS = (
    _kleene("and", "And", "&", kleene_and),
    _kleene("or", "Or", "|", kleene_or),
    _kleene("xor", "Xor", "^", kleene_xor),
    Operator("not", ("Boolean.Not",), logical, code=template("1.0 - {a}, {valid}"), write=lambda a: ~a),
)
