r"""Boolean regulatory rules and their continuous HillCube version
(Wittmann et al., "Transforming Boolean models to continuous models:
methodology and application to T-cell receptor signaling", BMC Systems
Biology 3:98, 2009; the method of the Odefy toolbox).

A rule ``target = expression`` uses gene names, ``and``, ``or``, ``not`` and
parentheses. It is parsed with :mod:`ast` into a tree of those nodes only
(nothing is evaluated as Python code).
"""
import ast
import itertools
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_.]*')
_KEYWORDS = {'and', 'or', 'not'}


@dataclass
class BooleanRule:
    """One rule: ``target = f(inputs)`` with its truth table.

    Attributes:
        target (str): The regulated gene.
        inputs (list of str): The genes the rule reads, in order of appearance.
        table (numpy.ndarray): ``[2] * len(inputs)`` truth table (bool).
        text (str): The rule as written.
    """
    target: str
    inputs: List[str]
    table: np.ndarray
    text: str

    def __repr__(self) -> str:
        return f'BooleanRule({self.text!r})'


def _evaluate(node: ast.AST, values: Dict[str, bool]) -> bool:
    if isinstance(node, ast.BoolOp):
        parts = [_evaluate(v, values) for v in node.values]
        return all(parts) if isinstance(node.op, ast.And) else any(parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _evaluate(node.operand, values)
    if isinstance(node, ast.Name):
        return values[node.id]
    raise ValueError(f"Unsupported element {ast.dump(node)} in a Boolean rule: use "
                     f"gene names, 'and', 'or', 'not' and parentheses")


def parse_rules(lines: Sequence[str]) -> List[BooleanRule]:
    """Parses ``target = expression`` lines (``#`` starts a comment).

    Returns:
        One :class:`BooleanRule` per rule, in file order.
    """
    rules = []
    for number, raw in enumerate(lines, 1):
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        if line.count('=') != 1:
            raise ValueError(f"Line {number} is not 'target = expression': {raw!r}")
        target, expr = (part.strip() for part in line.split('='))
        names = [n for n in _NAME.findall(expr) if n not in _KEYWORDS]
        inputs = list(dict.fromkeys(names))
        alias = {name: f'v{i}' for i, name in enumerate(inputs)}
        code = _NAME.sub(lambda m, a=alias: a.get(m.group(0), m.group(0)), expr)
        tree = ast.parse(code, mode='eval').body
        table = np.zeros([2] * len(inputs), dtype=bool)
        for state in itertools.product((False, True), repeat=len(inputs)):
            values = {f'v{i}': s for i, s in enumerate(state)}
            table[tuple(int(s) for s in state)] = _evaluate(tree, values)
        rules.append(BooleanRule(target, inputs, table, line))
    return rules


def hill_normalised(x: np.ndarray, n: float, k: float) -> np.ndarray:
    r"""The normalised Hill function :math:`\tilde f(x) = \frac{x^n}{x^n + k^n}
    (1 + k^n)` of HillCube, with :math:`\tilde f(0) = 0`, :math:`\tilde f(1) = 1`
    (inputs clipped to ``[0, 1]``).
    """
    x = np.clip(x, 0.0, 1.0) ** n
    return x / (x + k ** n) * (1.0 + k ** n)


def multilinear(table: np.ndarray, y: Sequence[np.ndarray]) -> np.ndarray:
    r"""The BooleCube interpolation of a truth table at continuous inputs.

    For inputs :math:`y_j \in [0, 1]`:

    .. math::
        B(\mathbf{y}) = \sum_{s \in \{0,1\}^m} b(s) \prod_j
        \big(s_j y_j + (1 - s_j)(1 - y_j)\big).
    """
    out = np.zeros_like(y[0]) if len(y) else np.asarray(float(table))
    for state in zip(*np.nonzero(table)):
        term = np.ones_like(y[0])
        for s, value in zip(state, y):
            term = term * (value if s else 1.0 - value)
        out = out + term
    return out


def input_effects(rule: BooleanRule) -> List[Tuple[str, float]]:
    r"""The signed effect of each input: the mean over the unit cube of
    :math:`\partial B / \partial y_j`, i.e. the average over the other inputs'
    Boolean states of :math:`b(s_j = 1) - b(s_j = 0)`.
    """
    out = []
    table = rule.table.astype(np.float64)
    for j, name in enumerate(rule.inputs):
        diff = np.take(table, 1, axis=j) - np.take(table, 0, axis=j)
        out.append((name, float(diff.mean())))
    return out
