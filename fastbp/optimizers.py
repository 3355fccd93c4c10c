"""The book's optimizers (``common/optimizer.py``) with Numba kernels for the update.

Same constructors and ``update(params, grads)`` as the book: ``params`` and ``grads`` are
dicts of arrays with the same keys; every ``params[key]`` is updated in place, so layers
holding it by reference see the new values. State arrays (``v``, ``h``, ``m``) are
allocated once, on the first update; later steps allocate nothing. The arithmetic is the
book's, term by term in the dtypes NumPy would use (float32 params and grads are updated
in float32), so results agree with the NumPy code to rounding.

Each parameter must be a writable, C-contiguous, native-byte-order float32/float64 ndarray,
each gradient a float32/float64 array of the same shape and each hyperparameter a real
number. State arrays set by the caller (a restored checkpoint) are treated like the book's
NumPy code treats them: Momentum rebinds ``v`` each step, so any real array of the right
shape works and one that cannot be updated in place as it is (another dtype or layout,
read-only) is replaced by a converted copy; AdaGrad and Adam update ``h``, ``m`` and ``v``
in place, so those must be writable float32/float64 ndarrays (any layout or byte order:
they are updated through a C-contiguous copy). A gradient sharing memory with its
parameter is copied first (NumPy's ``p -= lr * g`` computes ``lr * g`` before writing).
Anything else raises before any parameter or state changes.
"""

import numbers
from collections.abc import Mapping, MutableMapping

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
    """[(key, param, grad)], each a ``frozen`` view checked before any update."""
    for name, arrays in (("params", params), ("grads", grads)):
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{name} must be a dict of arrays, got {type(arrays).__name__}")
    pairs = []
    for key, p in params.items():
        p = checks.updatable(f"params[{key!r}]", p)
        if key not in grads:
            raise ValueError(f"grads has no entry for params[{key!r}]")
        g = checks.float_array(f"grads[{key!r}]", grads[key])
        checks.same_shape(f"grads[{key!r}]", g, f"params[{key!r}]", p.shape)
        pairs.append((key, p, g))
    return pairs


def _is_number(p):
    """Whether ``p`` is a real scalar that is not an array (int, float, NumPy scalar)."""
    return isinstance(p, numbers.Real) and not isinstance(p, (bool, np.bool_, np.ndarray))


def _kernel_ready(a):
    """Whether the kernel can update ``a`` in place as it is."""
    return a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative


class Optimizer:
    """Common ``update``: validate, allocate state on the first call, update each param."""

    state_names = ()  # the per-parameter state dicts, e.g. ("v",) for Momentum
    rebinds_state = False  # the book assigns new state arrays each step (Momentum)

    def __init__(self, **hyperparameters):
        """The book's attributes: each hyperparameter (checked to be a real number on every
        update) and each state dict, None until the first update."""
        self.hyperparameters = tuple(hyperparameters)
        for name, value in hyperparameters.items():
            setattr(self, name, value)
        for name in self.state_names:
            setattr(self, name, None)

    def _state_dtype(self, p, g):
        """dtype of the state arrays of param p (the book's np.zeros_like(p))."""
        return p.dtype

    def _allocate(self, pairs):
        """Zero state arrays on the first update."""
        if self.state_names and getattr(self, self.state_names[0]) is None:
            for name in self.state_names:
                setattr(
                    self,
                    name,
                    {key: np.zeros(p.shape, self._state_dtype(p, g)) for key, p, g in pairs},
                )

    def _state(self, name, key, p, g):
        """(array the kernel updates, array to store in ``self.name[key]`` first or None,
        array to copy the result back into afterwards or None); raises on a bad state."""
        label = f"{type(self).__name__}.{name}[{key!r}]"
        states = getattr(self, name)
        if not isinstance(states, MutableMapping):
            raise TypeError(f"{type(self).__name__}.{name} must be a dict of arrays")
        a = states.get(key)
        if a is None or np.shape(a) != p.shape:
            raise ValueError(
                f"params[{key!r}] does not match the parameters of this optimizer's first "
                f"update ({label} is missing or has another shape); use a new optimizer for "
                "a different set of parameters"
            )
        if self.rebinds_state:
            a = checks.frozen(a)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{label} must hold real numbers, got dtype {a.dtype}")
            # The dtype of the book's momentum * v - lr * grad (Python float scalars).
            dtype = np.result_type(np.result_type(a.dtype, 1.0), g.dtype)
            if a.dtype == dtype and _kernel_ready(a) and not np.may_share_memory(a, p):
                return a, None, None
            new = np.array(a, dtype=dtype, order="C")
            return new, new, None
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label} must be a NumPy array (updated in place), got {type(a)}")
        a = checks.frozen(a)
        dtype = a.dtype.newbyteorder("=")
        if dtype not in checks.FLOAT_DTYPES:
            raise TypeError(
                f"{label} has dtype {a.dtype}: it is updated in place with float results, "
                "so it must be float32 or float64"
            )
        if not a.flags.writeable:
            raise ValueError(f"{label} is read-only; it is updated in place (copy it first)")
        if np.may_share_memory(a, p) or np.may_share_memory(a, g):
            raise ValueError(f"{label} shares memory with params[{key!r}] or grads[{key!r}]")
        if _kernel_ready(a):
            return a, None, None
        work = np.array(a, dtype=dtype, order="C")
        return work, None, a

    def update(self, params, grads):
        """Update every ``params[key]`` in place from ``grads[key]``.

        A param that is a plain real number (the book's ``optimizer_compare_naive.py``
        optimises ``{'x': -7.0, 'y': 2.0}``) cannot change in place: like the book's
        ``params[key] -= ...`` it is replaced by the updated value (a NumPy float64)."""
        if isinstance(params, MutableMapping) and any(_is_number(p) for p in params.values()):
            work = {
                key: np.array(p, np.float64) if _is_number(p) else p for key, p in params.items()
            }
            self.update(work, grads)
            for key, p in params.items():
                if _is_number(p):
                    params[key] = work[key][()]
            return
        pairs = _validated(params, grads)
        for name in self.hyperparameters:
            checks.scalar(name, getattr(self, name))
        self._allocate(pairs)
        plans = [[self._state(name, key, p, g) for name in self.state_names] for key, p, g in pairs]
        self._begin_step()
        for (key, p, g), plan in zip(pairs, plans, strict=True):
            for name, (_, new, _) in zip(self.state_names, plan, strict=True):
                if new is not None:
                    getattr(self, name)[key] = new
            if np.may_share_memory(p, g):
                g = g.copy()
            g = checks.c_array(g, None)
            self._update(p.reshape(-1), g.reshape(-1), *(work.reshape(-1) for work, _, _ in plan))
            for work, _, target in plan:
                if target is not None:
                    target[...] = work

    def _begin_step(self):
        """Per-step bookkeeping before the parameter updates (Adam counts steps)."""

    def _update(self, p, g, *state):
        """Update flat param p from flat grad g and the flat state arrays, in place."""
        raise NotImplementedError


class SGD(Optimizer):
    """param -= lr * grad."""

    def __init__(self, lr=0.01):
        super().__init__(lr=lr)

    def _update(self, p, g):
        sgd_update(p, g, g.dtype.type(self.lr))


class Momentum(Optimizer):
    """v = momentum * v - lr * grad; param += v."""

    state_names = ("v",)
    rebinds_state = True

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)

    def _state_dtype(self, p, g):
        # The book rebinds v to momentum * v - lr * grad, whose dtype is that of p and grad.
        return np.result_type(p, g)

    def _update(self, p, g, v):
        momentum_update(p, g, v, g.dtype.type(self.lr), v.dtype.type(self.momentum))


class AdaGrad(Optimizer):
    """h += grad * grad; param -= lr * grad / (sqrt(h) + 1e-7)."""

    state_names = ("h",)

    def __init__(self, lr=0.01):
        super().__init__(lr=lr)

    def _update(self, p, g, h):
        adagrad_update(p, g, h, g.dtype.type(self.lr), h.dtype.type(EPS))


class Adam(Optimizer):
    """Adam as in the book: m, v moving averages, step lr_t bias-corrected per iteration."""

    state_names = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr=lr, beta1=beta1, beta2=beta2)
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

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr=lr, momentum=momentum)

    def _update(self, p, g, v):
        m, lr = self.momentum, self.lr
        nesterov_update(
            p, g, v, v.dtype.type(m * m), g.dtype.type((1 + m) * lr), g.dtype.type(lr),
            v.dtype.type(m),
        )  # fmt: skip


class RMSprop(Optimizer):
    """h = decay_rate * h + (1 - decay_rate) * grad**2; param -= lr * grad / (sqrt(h) + 1e-7)."""

    state_names = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr=lr, decay_rate=decay_rate)

    def _update(self, p, g, h):
        rmsprop_update(
            p, g, h, g.dtype.type(self.lr), h.dtype.type(self.decay_rate),
            g.dtype.type(1 - self.decay_rate), h.dtype.type(EPS),
        )  # fmt: skip
