"""Row-wise optimizers for sparse embedding tables: only the rows a push touches step.

A sparse table (ps/sparse/table.py) keeps, per row, the weights and the
optimizer's state in arrays parallel to its row storage. A push brings the
summed gradient of some rows; the table gathers those rows' weights and state,
``RowOptimizer.step`` updates the gathered copies in place, and the table
scatters them back. Rows a push does not touch are never read or written,
which is what makes a step cost the rows touched, not the table's size.

- ``sgd``: ``w -= lr * g``.
- ``adagrad``: torch's ``Adagrad`` on a sparse gradient (no lr decay):
  ``s += g*g; w -= lr * g / (sqrt(s) + eps)``.
- ``adam``: lazy Adam. Each row keeps its own step count, so a row's bias
  correction counts the steps *it* took. torch's ``SparseAdam`` keeps one step
  count per tensor; the two agree on a row that every step touches, and on any
  row when each row is its own tensor (how the tests check it).
- ``ftrl``: FTRL-proximal (McMahan et al., "Ad Click Prediction: a View from
  the Trenches", KDD 2013, Algorithm 1), per coordinate, with ``lr`` as alpha:
  ``sigma = (sqrt(n + g*g) - sqrt(n)) / alpha; z += g - sigma * w; n += g*g;
  w = 0 if |z| <= l1 else -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)``.
  Its weights are a function of ``(z, n)``, so an FTRL table starts at zero
  and ignores the learning-rate schedule (alpha is part of the state's meaning).

All arithmetic is float32, as torch's is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...settings import number, require

ROW_OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl")
_DEFAULT_EPS = {"adagrad": 1e-10, "adam": 1e-8}


@dataclass(frozen=True)
class RowOptimizerConfig:
    """The update rule of one sparse table. Settings of another rule must stay at their defaults."""

    name: str = "adagrad"
    lr: float = 0.01
    eps: float | None = None  # None: torch's default for the rule
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    initial_accumulator_value: float = 0.0  # adagrad
    beta: float = 1.0  # ftrl: the smoothing term of its per-coordinate learning rate
    l1: float = 0.0  # ftrl
    l2: float = 0.0  # ftrl

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name in ROW_OPTIMIZERS,
                f"sparse optimizer name ({self.name!r}) must be one of {', '.join(ROW_OPTIMIZERS)}")
        number(self.lr, "sparse optimizer lr", minimum=0, exclusive=True)
        if self.eps is not None:
            number(self.eps, "sparse optimizer eps", minimum=0, exclusive=True)
        require(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
                f"sparse optimizer betas ({self.betas!r}) must be two numbers in [0, 1)")
        number(self.initial_accumulator_value, "sparse optimizer initial_accumulator_value", minimum=0)
        number(self.beta, "sparse optimizer beta", minimum=0)
        number(self.l1, "sparse optimizer l1", minimum=0)
        number(self.l2, "sparse optimizer l2", minimum=0)
        for key, default, names in (("betas", (0.9, 0.999), ("adam",)),
                                    ("initial_accumulator_value", 0.0, ("adagrad",)),
                                    ("beta", 1.0, ("ftrl",)), ("l1", 0.0, ("ftrl",)), ("l2", 0.0, ("ftrl",))):
            value = getattr(self, key)
            same = tuple(value) == default if key == "betas" else value == default
            require(same or self.name in names,
                    f"sparse optimizer {key} applies to {', '.join(names)} only, not {self.name!r}")
        require(self.eps is None or self.name in _DEFAULT_EPS,
                f"sparse optimizer eps applies to {', '.join(_DEFAULT_EPS)} only, not {self.name!r}")

    @property
    def resolved_eps(self) -> float:
        return self.eps if self.eps is not None else _DEFAULT_EPS.get(self.name, 0.0)


class RowOptimizer:
    """One rule's per-row state and its update of gathered rows."""

    #: (name, values per row, dtype, initial value) of each per-row state array
    state_spec: tuple = ()
    #: whether the weights are derived from the state (ftrl): a table must then start at zero
    derives_weights = False

    def __init__(self, config: RowOptimizerConfig):
        self.config = config

    def _spec(self):
        return self.state_spec

    def step(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], lr: float) -> None:
        """Update the gathered rows ``w`` (rows x dim) and their ``state`` in place with gradient ``g``."""
        raise NotImplementedError


class RowSGD(RowOptimizer):
    def step(self, w, g, state, lr):
        w -= np.float32(lr) * g


class RowAdagrad(RowOptimizer):
    def _spec(self):
        return (("sum", 1, np.float32, self.config.initial_accumulator_value),)

    def step(self, w, g, state, lr):
        s = state["sum"]
        s += g * g
        w -= np.float32(lr) * g / (np.sqrt(s) + np.float32(self.config.resolved_eps))


class RowAdam(RowOptimizer):
    state_spec = (("exp_avg", 1, np.float32, 0.0), ("exp_avg_sq", 1, np.float32, 0.0),
                  ("step", 0, np.int32, 0))

    def step(self, w, g, state, lr):
        b1, b2 = (float(b) for b in self.config.betas)
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        t += 1
        # torch's sparse Adam arithmetic, in place where it can be (the same values, fewer temporaries)
        change = np.subtract(g, m)
        change *= np.float32(1 - b1)
        m += change
        np.multiply(g, g, out=change)
        change -= v
        change *= np.float32(1 - b2)
        v += change
        bias1 = 1 - np.power(b1, t.astype(np.float64))
        bias2 = 1 - np.power(b2, t.astype(np.float64))
        step_size = (lr * np.sqrt(bias2) / bias1).astype(np.float32)[:, None]
        np.sqrt(v, out=change)
        change += np.float32(self.config.resolved_eps)
        np.divide(m, change, out=change)
        change *= step_size
        w -= change


class RowFTRL(RowOptimizer):
    state_spec = (("z", 1, np.float32, 0.0), ("n", 1, np.float32, 0.0))
    derives_weights = True

    def step(self, w, g, state, lr):
        c = self.config
        alpha = np.float32(c.lr)  # alpha is fixed: the schedule does not move it (see the module docstring)
        z, n = state["z"], state["n"]
        new_n = n + g * g
        sigma = (np.sqrt(new_n) - np.sqrt(n)) / alpha
        z += g - sigma * w
        n[...] = new_n
        shrunk = np.sign(z) * np.float32(c.l1)
        w[...] = np.where(np.abs(z) <= c.l1, np.float32(0),
                          -(z - shrunk) / ((np.float32(c.beta) + np.sqrt(n)) / alpha + np.float32(c.l2)))


_RULES = {"sgd": RowSGD, "adagrad": RowAdagrad, "adam": RowAdam, "ftrl": RowFTRL}


def make_row_optimizer(config: RowOptimizerConfig) -> RowOptimizer:
    return _RULES[config.name](config)
