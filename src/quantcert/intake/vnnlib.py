"""VNN-LIB intake: the SMT-LIB subset VNN-COMP uses for specifications.

Declarations ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; ``(assert ...)``
over ``and`` / ``or`` of (chained) comparisons ``<= >= < > =`` between linear terms (numbers,
variables, ``+ - * /`` by constants); ``;`` comments; no-ops such as ``check-sat``.
Input constraints must bound single inputs and give one box (top level, inside ``and``, or
repeated identically in every disjunct of an ``or``). Output constraints are kept as a
disjunction of conjunctions, each atom normalised to ``a . y <= b``; strict ``<`` / ``>`` are
read as their closure ``<=`` / ``>=``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import pairwise, product
from pathlib import Path
from typing import NamedTuple, TypeAlias

import numpy as np

from quantcert.errors import InputError

Sexpr: TypeAlias = "str | list[Sexpr]"
Var: TypeAlias = tuple[str, int]
_Lin: TypeAlias = tuple[dict[Var, float], float]  # (coefficients, constant)
_Atom: TypeAlias = tuple[dict[Var, float], float]  # sum(coeffs * vars) <= rhs
_Dnf: TypeAlias = list[list[_Atom]]
_Bound: TypeAlias = tuple[int, bool, float]  # (input index, is upper bound, value)

_TOKEN = re.compile(r"[()]|[^\s()]+")
_COMMENT = re.compile(r";[^\n]*")
_VAR = re.compile(r"([XY])_(\d+)\Z")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_NO_OPS = frozenset({"check-sat", "get-model", "set-logic", "set-info", "set-option", "exit"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})
_ARITHMETIC = frozenset({"+", "-", "*", "/"})
MAX_DISJUNCTS = 100_000


class LinearConstraint(NamedTuple):
    """One atomic output constraint ``sum(coeffs[j] * Y_j) <= rhs`` (always ``<=``)."""

    coeffs: dict[int, float]
    rhs: float

    def row(self, n_outputs: int) -> np.ndarray:
        """The coefficients as a dense row of shape ``(n_outputs,)``."""
        a = np.zeros(n_outputs, dtype=np.float64)
        for j, c in self.coeffs.items():
            a[j] = c
        return a

    def holds(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether output ``y`` (shape ``(n_outputs,)``) satisfies it, up to ``tol``."""
        return sum(c * float(y[j]) for j, c in self.coeffs.items()) <= self.rhs + tol


@dataclass(frozen=True, eq=False)
class VnnlibSpec:
    """A parsed VNN-LIB file.

    ``lower`` / ``upper``: the input box, float64 arrays of shape ``(n_inputs,)``, read-only.
    ``output_property``: disjunction (outer list) of conjunctions (inner lists) of constraints
    on ``Y``; ``[]`` when the file states no output constraint. ``n_outputs``: declared ``Y``.
    """

    lower: np.ndarray
    upper: np.ndarray
    output_property: list[list[LinearConstraint]]
    n_outputs: int

    @property
    def n_inputs(self) -> int:
        """Number of inputs ``X``."""
        return int(self.lower.shape[0])

    def centre(self) -> np.ndarray:
        """The box centre, shape ``(n_inputs,)``, clipped into the box (no overflow)."""
        with np.errstate(over="ignore"):
            mid = (self.lower + self.upper) / 2.0
        mid = np.where(np.isfinite(mid), mid, self.lower / 2.0 + self.upper / 2.0)
        out: np.ndarray = np.clip(mid, self.lower, self.upper)
        return out

    def output_matrices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each conjunction as ``(A, b)``, ``A`` of shape ``(k, n_outputs)``, meaning A y <= b."""
        out = []
        for conj in self.output_property:
            a = np.stack([c.row(self.n_outputs) for c in conj]).reshape(-1, self.n_outputs)
            out.append((a, np.array([c.rhs for c in conj], dtype=np.float64)))
        return out


def load_vnnlib(path: str | Path) -> VnnlibSpec:
    """Read and parse a VNN-LIB file; any problem raises ``InputError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"VNN-LIB file {p} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"VNN-LIB file {p} cannot be read ({type(exc).__name__})") from None
    return parse_vnnlib(text, name=str(p))


def parse_vnnlib(text: str, name: str = "<text>") -> VnnlibSpec:
    """Parse VNN-LIB source text; ``name`` appears in error messages."""
    return _Interpreter(name).run(read_sexprs(text, name))


def read_sexprs(text: str, name: str = "<text>") -> list[Sexpr]:
    """The top-level s-expressions of ``text`` (comments removed), tokens as strings."""
    stack: list[list[Sexpr]] = [[]]
    for tok in _TOKEN.findall(_COMMENT.sub("", text)):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise InputError(f"VNN-LIB file {name} is unparsable: unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise InputError(f"VNN-LIB file {name} is unparsable: unbalanced '('")
    return stack[0]


def _show(expr: Sexpr) -> str:
    text = expr if isinstance(expr, str) else "(" + " ".join(_show(e) for e in expr) + ")"
    return text if len(text) <= 60 else text[:57] + "..."


class _Interpreter:
    """Walks the commands, collecting declarations, input bounds and output factors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.declared: dict[str, set[int]] = {"X": set(), "Y": set()}
        self.lower: dict[int, float] = {}
        self.upper: dict[int, float] = {}
        self.factors: list[list[list[LinearConstraint]]] = []

    def fail(self, what: str) -> InputError:
        return InputError(f"VNN-LIB file {self.name}: {what}")

    def run(self, commands: list[Sexpr]) -> VnnlibSpec:
        for cmd in commands:
            if isinstance(cmd, str) or not cmd or not isinstance(cmd[0], str):
                raise self.fail(f"unexpected {_show(cmd)}")
            head, args = cmd[0], cmd[1:]
            if head == "declare-const":
                self.declare(cmd)
            elif head == "assert" and len(args) == 1:
                self.add_assertion(args[0])
            elif head not in _NO_OPS:
                raise self.fail(f"unsupported command {_show(cmd)}")
        return self.finish()

    def declare(self, cmd: list[Sexpr]) -> None:
        """``(declare-const V Real)``, ``V`` one of ``X_i`` / ``Y_j``."""
        ok = len(cmd) == 3 and cmd[0] == "declare-const" and cmd[2] == "Real"
        if (m := _VAR.match(str(cmd[1])) if ok else None) is None:
            raise self.fail(f"unsupported declaration {_show(cmd)} (want X_i or Y_j Real)")
        self.declared[m.group(1)].add(int(m.group(2)))

    def add_assertion(self, expr: Sexpr) -> None:
        dnf = self.dnf(expr)
        if not dnf:
            raise self.fail("an empty 'or' is always false")
        x_parts, y_parts = zip(*(self.split(conj) for conj in dnf), strict=True)
        if any(x != x_parts[0] for x in x_parts):
            raise self.fail("disjunctions over inputs X are not supported (one box only)")
        for i, is_upper, v in x_parts[0]:
            bounds, pick = (self.upper, min) if is_upper else (self.lower, max)
            bounds[i] = pick(bounds[i], v) if i in bounds else v
        if all(y_parts):
            self.factors.append([list(y) for y in y_parts])

    def split(self, conj: list[_Atom]) -> tuple[list[_Bound], list[LinearConstraint]]:
        """Input bounds (sorted) and output constraints of one conjunction."""
        xs: list[_Bound] = []
        ys: list[LinearConstraint] = []
        for coeffs, rhs in conj:
            kinds = {v[0] for v in coeffs}
            if kinds == {"Y"}:
                ys.append(LinearConstraint({j: c for (_, j), c in coeffs.items()}, rhs))
            elif kinds == {"X"} and len(coeffs) == 1:
                [((_, i), c)] = coeffs.items()
                xs.append((i, c > 0, rhs / c + 0.0))  # + 0.0: no -0.0
            elif not kinds and rhs < 0:
                raise self.fail("a constraint without variables is always false")
            elif kinds:
                raise self.fail("only bounds of single inputs and constraints on Y are supported")
        return sorted(xs), ys

    def dnf(self, expr: Sexpr) -> _Dnf:
        """Disjunctive normal form of a Boolean expression: a list of conjunctions of atoms."""
        if isinstance(expr, str) or not expr:
            raise self.fail(f"expected a constraint, got {_show(expr)}")
        head = expr[0]
        if head == "and":
            return self.conjoin(expr[1:])
        if head == "or":
            return [conj for part in expr[1:] for conj in self.dnf(part)]
        if isinstance(head, str) and head in _COMPARISONS and len(expr) >= 3:
            return [self.compare(head, expr[1:])]
        raise self.fail(f"unsupported constraint {_show(expr)}")

    def conjoin(self, parts: list[Sexpr]) -> _Dnf:
        acc: _Dnf = [[]]
        for part in parts:
            d = self.dnf(part)
            if len(d) == 1:
                for conj in acc:
                    conj.extend(d[0])
            else:
                acc = [c + e for c in acc for e in d]
                if len(acc) > MAX_DISJUNCTS:
                    raise self.fail(f"more than {MAX_DISJUNCTS} disjuncts")
        return acc

    def compare(self, op: str, args: list[Sexpr]) -> list[_Atom]:
        """Atoms ``coeffs . v <= rhs`` of a (chained) comparison."""
        terms = [self.linear(a) for a in args]
        atoms: list[_Atom] = []
        for (ca, ka), (cb, kb) in pairwise(terms):
            diff = dict(ca)
            for v, c in cb.items():
                diff[v] = diff.get(v, 0.0) - c
            diff = {v: c for v, c in diff.items() if c != 0.0}
            if op in ("<=", "<", "="):
                atoms.append((diff, kb - ka))
            if op in (">=", ">", "="):
                atoms.append(({v: -c for v, c in diff.items()}, ka - kb))
        return atoms

    def linear(self, expr: Sexpr) -> _Lin:
        """A linear term as (coefficients, constant)."""
        if isinstance(expr, str):
            return self.leaf(expr)
        if len(expr) < 2 or not isinstance(expr[0], str) or expr[0] not in _ARITHMETIC:
            raise self.fail(f"unsupported term {_show(expr)}")
        terms = [self.linear(e) for e in expr[1:]]
        if expr[0] == "-" and len(terms) == 1:
            return _scale(terms[0], -1.0)
        if expr[0] in ("+", "-"):
            rest = [t if expr[0] == "+" else _scale(t, -1.0) for t in terms[1:]]
            return _add([terms[0], *rest])
        return self.multiply(expr[0], terms, expr)

    def multiply(self, op: str, terms: list[_Lin], expr: Sexpr) -> _Lin:
        if op == "/" and (len(terms) != 2 or terms[1][0] or terms[1][1] == 0.0):
            raise self.fail(f"unsupported division {_show(expr)}")
        if op == "/":
            return _scale(terms[0], 1.0 / terms[1][1])
        if sum(1 for t in terms if t[0]) > 1:
            raise self.fail(f"non-linear term {_show(expr)}")
        acc: _Lin = ({}, 1.0)
        for t in terms:
            acc = _scale(t, acc[1]) if t[0] else _scale(acc, t[1])
        return acc

    def leaf(self, tok: str) -> _Lin:
        if NUMBER.match(tok):
            value = float(tok)
            if not math.isfinite(value):
                raise self.fail(f"number {tok} is not finite")
            return {}, value
        m = _VAR.match(tok)
        if m is None:
            raise self.fail(f"unknown symbol {tok!r}")
        var = (m.group(1), int(m.group(2)))
        if var[1] not in self.declared[var[0]]:
            raise self.fail(f"{tok} is used but not declared")
        return {var: 1.0}, 0.0

    def finish(self) -> VnnlibSpec:
        n_x, n_y = len(self.declared["X"]), len(self.declared["Y"])
        for kind, n in (("X", n_x), ("Y", n_y)):
            if self.declared[kind] != set(range(n)):
                raise self.fail(f"declared {kind} variables are not {kind}_0..{kind}_{n - 1}")
        if n_x == 0:
            raise self.fail("declares no inputs X_0, X_1, ...")
        missing = [i for i in range(n_x) if i not in self.lower or i not in self.upper]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"VNN-LIB file {self.name} has no bounds for X_{missing[0]}{more}")
        lo = np.array([self.lower[i] for i in range(n_x)], dtype=np.float64)
        hi = np.array([self.upper[i] for i in range(n_x)], dtype=np.float64)
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            raise self.fail(f"X_{i} has lower {float(lo[i])!r} > upper {float(hi[i])!r}")
        lo.setflags(write=False)
        hi.setflags(write=False)
        return VnnlibSpec(lo, hi, self.combine(), n_y)

    def combine(self) -> list[list[LinearConstraint]]:
        """The conjunction of all output factors, distributed into one disjunction."""
        if not self.factors:
            return []
        size = math.prod(len(f) for f in self.factors)
        if size > MAX_DISJUNCTS:
            raise self.fail(f"output property has more than {MAX_DISJUNCTS} disjuncts")
        return [[c for conj in choice for c in conj] for choice in product(*self.factors)]


def _scale(t: _Lin, k: float) -> _Lin:
    return {v: c * k for v, c in t[0].items()}, t[1] * k


def _add(terms: list[_Lin]) -> _Lin:
    coeffs: dict[Var, float] = {}
    for t in terms:
        for v, c in t[0].items():
            coeffs[v] = coeffs.get(v, 0.0) + c
    return coeffs, sum(t[1] for t in terms)
