"""The book's optimizers (``common/optimizer.py``) with Numba kernels for the update.

Same constructors and ``update(params, grads)`` as the book: ``params`` and ``grads`` are
dicts of arrays with the same keys; every ``params[key]`` is updated in place, so layers
holding it by reference see the new values. State arrays (``v``, ``h``, ``m``) are
allocated once, on the first update; later steps allocate nothing. The arithmetic is the
book's, term by term in the dtypes NumPy would use (float32 params and grads are updated
in float32), so results agree with the NumPy code to rounding.

Each parameter must be a writable, C-contiguous, native-byte-order float32/float64 ndarray,
each gradient a float32/float64 array of the same shape and each hyperparameter a real
number; anything else raises before any update.
"""

from collections.abc import Mapping

import numpy as np

from fastbp import checks
from fastbp.kernels.optimizers import (
    adagrad_update,
    adam_update,
    momentum_update,
    nesterov_update,
    rmsprop_update,
    sgd_update,
)

# The book's guard against division by zero in AdaGrad and Adam.
EPS = 1e-7


def _validated(params, grads):
    """[(key, param, grad)] with each grad C-contiguous, validated before any update."""
    for name, arrays in (("params", params), ("grads", grads)):
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{name} must be a dict of arrays, got {type(arrays).__name__}")
    pairs = []
    for key, p in params.items():
        checks.updatable(f"params[{key!r}]", p)
        if key not in grads:
            raise ValueError(f"grads has no entry for params[{key!r}]")
        g = checks.float_array(f"grads[{key!r}]", grads[key])
        checks.same_shape(f"grads[{key!r}]", g, f"params[{key!r}]", p.shape)
        pairs.append((key, p, np.ascontiguousarray(g)))
    return pairs


class Optimizer:
    """Common ``update``: validate, allocate state on the first call, update each param."""

    state_names = ()  # the per-parameter state dicts, e.g. ("v",) for Momentum
    hyperparameters = ("lr",)  # attributes checked to be real numbers on every update

    def __init__(self):
        for name in self.state_names:
            setattr(self, name, None)

    def _state_dtype(self, p, g):
        """dtype of the state arrays of param p (the book's np.zeros_like(p))."""
        return p.dtype

    def _states(self, pairs):
        """[(flat state arrays...)] per pair, allocated (zeros) on the first update."""
        if self.state_names and getattr(self, self.state_names[0]) is None:
            for name in self.state_names:
                setattr(
                    self,
                    name,
                    {key: np.zeros(p.shape, self._state_dtype(p, g)) for key, p, g in pairs},
                )
        states = []
        for key, p, _ in pairs:
            arrays = tuple(getattr(self, name).get(key) for name in self.state_names)
            if any(a is None or a.shape != p.shape for a in arrays):
                raise ValueError(
                    f"params[{key!r}] does not match the parameters of this optimizer's first "
                    "update; use a new optimizer for a different set of parameters"
                )
            states.append(tuple(a.reshape(-1) for a in arrays))
        return states

    def update(self, params, grads):
        """Update every ``params[key]`` in place from ``grads[key]``."""
        pairs = _validated(params, grads)
        for name in self.hyperparameters:
            checks.scalar(name, getattr(self, name))
        states = self._states(pairs)
        self._begin_step()
        for (_, p, g), state in zip(pairs, states, strict=True):
            self._update(p.reshape(-1), g.reshape(-1), *state)

    def _begin_step(self):
        """Per-step bookkeeping before the parameter updates (Adam counts steps)."""

    def _update(self, p, g, *state):
        """Update flat param p from flat grad g and the flat state arrays, in place."""
        raise NotImplementedError


class SGD(Optimizer):
    """param -= lr * grad."""

    def __init__(self, lr=0.01):
        super().__init__()
        self.lr = lr

    def _update(self, p, g):
        sgd_update(p, g, g.dtype.type(self.lr))


class Momentum(Optimizer):
    """v = momentum * v - lr * grad; param += v."""

    state_names = ("v",)
    hyperparameters = ("lr", "momentum")

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__()
        self.lr = lr
        self.momentum = momentum

    def _state_dtype(self, p, g):
        # The book rebinds v to momentum * v - lr * grad, whose dtype is that of p and grad.
        return np.result_type(p, g)

    def _update(self, p, g, v):
        momentum_update(p, g, v, g.dtype.type(self.lr), v.dtype.type(self.momentum))


class AdaGrad(Optimizer):
    """h += grad * grad; param -= lr * grad / (sqrt(h) + 1e-7)."""

    state_names = ("h",)

    def __init__(self, lr=0.01):
        super().__init__()
        self.lr = lr

    def _update(self, p, g, h):
        adagrad_update(p, g, h, g.dtype.type(self.lr), h.dtype.type(EPS))


class Adam(Optimizer):
    """Adam as in the book: m, v moving averages, step lr_t bias-corrected per iteration."""

    state_names = ("m", "v")
    hyperparameters = ("lr", "beta1", "beta2")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__()
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.lr_t = None

    def _begin_step(self):
        self.iter += 1
        self.lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)

    def _update(self, p, g, m, v):
        term = np.result_type(g, m).type
        adam_update(
            p,
            g,
            m,
            v,
            np.float64(self.lr_t),
            term(1 - self.beta1),
            term(1 - self.beta2),
            v.dtype.type(EPS),
        )


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient as in the book: param += momentum**2 * v;
    param -= (1 + momentum) * lr * grad; v = momentum * v - lr * grad."""

    state_names = ("v",)
    hyperparameters = ("lr", "momentum")

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__()
        self.lr = lr
        self.momentum = momentum

    def _update(self, p, g, v):
        m, lr = self.momentum, self.lr
        nesterov_update(
            p, g, v, v.dtype.type(m * m), g.dtype.type((1 + m) * lr), g.dtype.type(lr),
            v.dtype.type(m),
        )  # fmt: skip


class RMSprop(Optimizer):
    """h = decay_rate * h + (1 - decay_rate) * grad**2; param -= lr * grad / (sqrt(h) + 1e-7)."""

    state_names = ("h",)
    hyperparameters = ("lr", "decay_rate")

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__()
        self.lr = lr
        self.decay_rate = decay_rate

    def _update(self, p, g, h):
        rmsprop_update(
            p, g, h, g.dtype.type(self.lr), h.dtype.type(self.decay_rate),
            g.dtype.type(1 - self.decay_rate), h.dtype.type(EPS),
        )  # fmt: skip
