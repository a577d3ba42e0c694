"""Arithmetic: ``+ - * / // %``, ``pow``, ``neg``, ``abs``, ``sign``, ``floor``, ``ceil``, elementwise.

Rust's f64 arithmetic and the platform libm, which numba calls too, so values are identical once each
operation is evaluated as polars evaluates it:

- with a scalar operand (a literal, or a constant sub-expression polars evaluates once): adding or subtracting
  a scalar zero returns the other operand unchanged and ``0 - b`` is ``-b`` (so ``-0.0 + 0.0`` is -0.0, not
  IEEE's 0.0); a division by a scalar is a multiplication by its reciprocal, ``a * (1.0 / b)``: a different
  last bit than ``a / b``;
- ``a // b`` is ``floor(a / b)`` and ``a % b`` is ``a - b * floor(a / b)`` (the result takes the sign of ``b``),
  with ``a * (1.0 / b)`` for ``a / b`` when ``b`` is a scalar;
- ``pow`` with a scalar exponent: 1 gives ``a``, 0.5 gives ``sqrt(a)`` (so ``(-0.0) ** 0.5`` is -0.0 and
  ``(-inf) ** 0.5`` NaN), an integer from 2 to 9 the product ``a * a * ... * a`` from the left; any other
  exponent is libm's ``pow``;
- ``sign`` keeps NaN and the sign of zero.

Null in, null out; integers computed against integers keep the integer type in polars (refused, see
``featurestore.operators.base``).

>>> sign(-2.5), sign(-0.0), sign(float("nan"))
(-1.0, -0.0, nan)
"""

from __future__ import annotations

import math

from featurestore.operators.base import Arg, Emit, Operator, arithmetic, float_math, kernel, template

__all__ = ["OPERATORS", "sign"]


@kernel
def sign(a):
    if math.isnan(a):
        return a
    if a > 0.0:
        return 1.0
    if a < 0.0:
        return -1.0
    return a


def _is_zero(arg: Arg) -> bool:
    return arg.literal and arg.constant is not None and arg.constant == 0


def _add_code(emit: Emit) -> list[str]:
    a, b = emit.args
    value = a.value if _is_zero(b) else b.value if _is_zero(a) else f"{a.value} + {b.value}"
    return [f"{emit.value}, {emit.valid} = {value}, {a.valid} and {b.valid}"]


def _sub_code(emit: Emit) -> list[str]:
    a, b = emit.args
    value = a.value if _is_zero(b) else f"-({b.value})" if _is_zero(a) else f"{a.value} - {b.value}"
    return [f"{emit.value}, {emit.valid} = {value}, {a.valid} and {b.valid}"]


def _divide(formula: str):
    """truediv, floordiv, mod: ``{q}`` is the quotient, by the reciprocal when the divisor is a scalar."""

    def code(emit: Emit) -> list[str]:
        a, b = emit.args
        q = f"{a.value} * (1.0 / {b.value})" if b.literal else f"{a.value} / {b.value}"
        return [f"{emit.value}, {emit.valid} = {formula.format(a=a.value, b=b.value, q=q)}, {a.valid} and {b.valid}"]

    return code


def _pow_code(emit: Emit) -> list[str]:
    a, b = emit.args
    exponent = float(b.constant) if b.literal and b.constant is not None else None
    if exponent == 1.0:
        value = a.value
    elif exponent == 0.5:
        value = f"math.sqrt({a.value})"
    elif exponent is not None and exponent.is_integer() and 1.0 < exponent < 10.0:
        value = " * ".join([a.value] * int(exponent))
    else:
        value = f"{a.value} ** {b.value}"
    return [f"{emit.value}, {emit.valid} = {value}, {a.valid} and {b.valid}"]


def _infix(name: str, polars: str, infix: str, typing=arithmetic, code=None) -> Operator:
    return Operator(name, (polars,), typing, arguments=2, infix=infix,
                    code=code or template(f"{{a}} {infix} {{b}}, {{valid}}"),
                    write=lambda a, b: getattr(a, f"__{name}__")(b))


OPERATORS = (
    _infix("add", "Plus", "+", code=_add_code),
    _infix("sub", "Minus", "-", code=_sub_code),
    _infix("mul", "Multiply", "*"),
    _infix("truediv", "TrueDivide", "/", float_math, _divide("{q}")),
    _infix("floordiv", "FloorDivide", "//", code=_divide("np.floor({q})")),
    _infix("mod", "Modulus", "%", code=_divide("{a} - {b} * np.floor({q})")),
    Operator("pow", ("Pow.Generic",), arithmetic, arguments=2, code=_pow_code, write=lambda a, b: a.pow(b)),
    Operator("neg", ("Negate",), arithmetic, code=template("-({a}), {valid}"), write=lambda a: -a),
    Operator("abs", ("Abs",), arithmetic, code=template("abs({a}), {valid}"), write=lambda a: a.abs()),
    Operator("sign", ("Sign",), arithmetic, code=template("sign({a}), {valid}"), kernels=(sign,),
             write=lambda a: a.sign()),
    Operator("floor", ("Floor",), arithmetic, code=template("np.floor({a}), {valid}"), write=lambda a: a.floor()),
    Operator("ceil", ("Ceil",), arithmetic, code=template("np.ceil({a}), {valid}"), write=lambda a: a.ceil()),
)
