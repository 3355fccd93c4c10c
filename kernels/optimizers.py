"""In-place parameter updates of the book's optimizers (``common/optimizer.py``).

Every array is 1-D and C-contiguous (the caller, ``fastbp.optimizers``, passes flat views
and validates shapes and dtypes). ``param`` and the state arrays are updated in place;
nothing is allocated. The caller casts each scalar to the dtype NumPy would compute that
term in, so float32 parameters are updated in float32 arithmetic like the book's code.
"""

import numpy as np
from numba import prange

from fastbp.kernels.dispatch import twin


@twin
def sgd_update(param, grad, lr):
    """param -= lr * grad."""
    for i in prange(param.size):
        param[i] -= lr * grad[i]


@twin
def momentum_update(param, grad, v, lr, momentum):
    """v = momentum * v - lr * grad; param += v."""
    for i in prange(param.size):
        v[i] = momentum * v[i] - lr * grad[i]
        param[i] += v[i]


@twin
def adagrad_update(param, grad, h, lr, eps):
    """h += grad * grad; param -= lr * grad / (sqrt(h) + eps)."""
    for i in prange(param.size):
        h[i] += grad[i] * grad[i]
        param[i] -= lr * grad[i] / (np.sqrt(h[i]) + eps)


@twin
def adam_update(param, grad, m, v, lr_t, one_minus_beta1, one_minus_beta2, eps):
    """m += (1 - beta1) * (grad - m); v += (1 - beta2) * (grad**2 - v);
    param -= lr_t * m / (sqrt(v) + eps), with lr_t the bias-corrected step."""
    for i in prange(param.size):
        g = grad[i]
        m[i] += one_minus_beta1 * (g - m[i])
        v[i] += one_minus_beta2 * (g * g - v[i])
        param[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)


@twin
def nesterov_update(param, grad, v, momentum_sq, step, lr, momentum):
    """param += momentum**2 * v; param -= (1 + momentum) * lr * grad;
    v = momentum * v - lr * grad (``step`` is (1 + momentum) * lr)."""
    for i in prange(param.size):
        g = grad[i]
        param[i] += momentum_sq * v[i]
        param[i] -= step * g
        v[i] *= momentum
        v[i] -= lr * g


@twin
def rmsprop_update(param, grad, h, lr, decay_rate, one_minus_decay, eps):
    """h = decay_rate * h + (1 - decay_rate) * grad**2; param -= lr * grad / (sqrt(h) + eps)."""
    for i in prange(param.size):
        g = grad[i]
        h[i] *= decay_rate
        h[i] += one_minus_decay * g * g
        param[i] -= lr * g / (np.sqrt(h[i]) + eps)
