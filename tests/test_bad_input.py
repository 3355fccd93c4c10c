"""Bad-input matrix: one table of cases drives every test in this module.

Each case takes the valid arguments of one public entry point (a layer's forward then
backward, a network's loss/gradient/accuracy, an optimizer's update), corrupts one of them,
runs it, and expects either

- ``Raises(type, arg)``: that exception type, with a message naming the argument, or
- ``SAME``: the documented result, i.e. exactly what the book's NumPy code computes on the
  same values (NaN and inf propagate by IEEE rules; lists, read-only, strided,
  Fortran-ordered and byte-swapped arrays are accepted).

Whatever the outcome, no argument may be modified (checked against a deep copy), except
the parameters an optimizer's ``update`` documents to update in place, and those only when
the update succeeds: an error is raised before any update.
"""

import copy
import re
from dataclasses import dataclass

import numpy as np
import pytest

from fastbp import layers, nets, optimizers
from fastbp import reference as ref

N, K, M, C = 5, 4, 3, 3  # batch, features, Affine outputs, classes
RTOL = 1e-12  # everything here is float64


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


LABELS = np.array([0, 2, 1, 2, 0])
ONEHOT = "SoftmaxWithLoss-onehot"  # the entry with one-hot labels t


# -- entry points: each runs forward then backward, fastbp and the book's NumPy ---------


@dataclass(frozen=True)
class Entry:
    args: dict  # argument name -> a valid value
    run: object  # fastbp: args -> {output name: value}
    expect: object  # the book's NumPy (fastbp.reference): args -> {output name: value}
    updates: tuple = ()  # arguments documented to be updated in place on success


def _run_relu(a):
    layer = layers.Relu()
    return {"out": layer.forward(a["x"]), "dx": layer.backward(a["dout"])}


def _expect_relu(a):
    out, mask = ref.relu_forward(a["x"])
    return {"out": out, "dx": ref.relu_backward(a["dout"], mask)}


def _run_sigmoid(a):
    layer = layers.Sigmoid()
    return {"out": layer.forward(a["x"]), "dx": layer.backward(a["dout"])}


def _expect_sigmoid(a):
    y = ref.sigmoid(a["x"])
    return {"out": y, "dx": ref.sigmoid_backward(a["dout"], y)}


def _run_affine(a):
    layer = layers.Affine(a["W"], a["b"])
    out = layer.forward(a["x"])
    return {"out": out, "dx": layer.backward(a["dout"]), "dW": layer.dW, "db": layer.db}


def _expect_affine(a):
    x = a["x"].reshape(a["x"].shape[0], -1)
    dx, dW, db = ref.affine_backward(a["dout"], x, a["W"])
    out = ref.affine_forward(x, a["W"], a["b"])
    return {"out": out, "dx": dx.reshape(a["x"].shape), "dW": dW, "db": db}


def _run_softmax(a):
    layer = layers.SoftmaxWithLoss()
    loss = layer.forward(a["x"], a["t"])
    return {"loss": loss, "y": layer.y, "dx": layer.backward(a["dout"])}


def _expect_softmax(a):
    loss, y = ref.softmax_ce_forward(a["x"], a["t"])
    return {"loss": loss, "y": y, "dx": ref.softmax_ce_backward(y, a["t"], a["dout"])}


def _run_binary(cls):
    def run(a):
        layer = cls()
        out = layer.forward(a["x"], a["y"])
        dx, dy = layer.backward(a["dout"])
        return {"out": out, "dx": dx, "dy": dy}

    return run


HIDDEN = 6


def _run_net(method):
    def run(a):
        net = nets.TwoLayerNet(K, HIDDEN, C, weight_init_std=0.5, rng=0)
        if method == "accuracy":
            return {"accuracy": net.accuracy(a["x"], a["t"])}
        return {"loss": net.loss(a["x"], a["t"]), **net.gradient(a["x"], a["t"])}

    return run


def _expect_net(method):
    def expect(a):
        net = ref.TwoLayerNet(K, HIDDEN, C)
        for key, value in nets.TwoLayerNet(K, HIDDEN, C, weight_init_std=0.5, rng=0).params.items():
            net.params[key][...] = value  # in place: the book's layers hold these arrays
        if method == "accuracy":
            return {"accuracy": net.accuracy(a["x"], a["t"])}
        return {"loss": net.loss(a["x"], a["t"]), **net.gradient(a["x"], a["t"])}

    return expect


PARAM_KEYS = ("W", "b")


def _run_optimizer(cls):
    """Two update steps (the second uses the optimizer's state) of params W and b."""

    def run(a):
        params = {key: a[f"params['{key}']"] for key in PARAM_KEYS}
        grads = {key: a[f"grads['{key}']"] for key in PARAM_KEYS}
        optimizer = cls(lr=a["lr"])
        for _ in range(2):
            optimizer.update(params, grads)
        return params

    return run


def _optimizer_entry(cls, book_cls):
    args = {
        "params['W']": _normal(17, (K, M)),
        "params['b']": _normal(18, M),
        "grads['W']": _normal(19, (K, M)),
        "grads['b']": _normal(20, M),
        "lr": 0.1,
    }
    updates = ("params['W']", "params['b']")
    return Entry(args, _run_optimizer(cls), _run_optimizer(book_cls), updates)


ENTRIES = {
    "Relu": Entry({"x": _normal(1, (N, K)), "dout": _normal(2, (N, K))}, _run_relu, _expect_relu),
    "Sigmoid": Entry(
        {"x": _normal(3, (N, K)), "dout": _normal(4, (N, K))}, _run_sigmoid, _expect_sigmoid
    ),
    "Affine": Entry(
        {
            "x": _normal(5, (N, K)),
            "W": _normal(6, (K, M)),
            "b": _normal(7, M),
            "dout": _normal(8, (N, M)),
        },
        _run_affine,
        _expect_affine,
    ),
    "SoftmaxWithLoss": Entry(
        {"x": _normal(9, (N, C)), "t": LABELS, "dout": 1.0}, _run_softmax, _expect_softmax
    ),
    ONEHOT: Entry(
        {"x": _normal(10, (N, C)), "t": np.eye(C)[LABELS], "dout": 1.0},
        _run_softmax,
        _expect_softmax,
    ),
    "MulLayer": Entry(
        {"x": _normal(11, (N, K)), "y": _normal(12, (N, K)), "dout": _normal(13, (N, K))},
        _run_binary(layers.MulLayer),
        _run_binary(ref.MulLayer),
    ),
    "AddLayer": Entry(
        {"x": _normal(14, (N, K)), "y": _normal(15, (N, K)), "dout": _normal(16, (N, K))},
        _run_binary(layers.AddLayer),
        _run_binary(ref.AddLayer),
    ),
    "TwoLayerNet": Entry(
        {"x": _normal(21, (N, K)), "t": LABELS}, _run_net("gradient"), _expect_net("gradient")
    ),
    "TwoLayerNet-onehot": Entry(
        {"x": _normal(22, (N, K)), "t": np.eye(C)[LABELS]},
        _run_net("gradient"),
        _expect_net("gradient"),
    ),
    "TwoLayerNet.accuracy": Entry(
        {"x": _normal(23, (N, K)), "t": LABELS}, _run_net("accuracy"), _expect_net("accuracy")
    ),
    **{
        cls.__name__: _optimizer_entry(cls, getattr(ref, cls.__name__))
        for cls in (optimizers.SGD, optimizers.Momentum, optimizers.AdaGrad, optimizers.Adam)
    },
}


# -- corruptions ---------------------------------------------------------------------


def cast(dtype):
    return lambda a: a.astype(dtype)


def put(value, index=1):
    """A copy of ``a`` with its flat element ``index`` set to ``value``."""

    def corrupt(a):
        a = a.copy()
        a.flat[index] = value
        return a

    return corrupt


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def fortran(a):
    return np.asfortranarray(a)


def strided(a):
    """A non-contiguous view holding a's values: every other element of a wider buffer."""
    return np.repeat(a, 2, axis=-1)[..., ::2]


def reversed_view(a):
    """A view with negative strides holding a's values."""
    return np.flip(np.flip(a).copy())


def byteswapped(a):
    """a's values in the non-native byte order."""
    return a.astype(a.dtype.newbyteorder("S"))


def listed(a):
    return a.tolist()


def replace(value):
    return lambda a: value


@dataclass(frozen=True)
class Raises:
    type: type
    arg: str


SAME = "same"  # the documented result: equal to the book's NumPy result


# The generic corruptions, applied to every array argument, and how each kind of argument
# answers them. Kinds: "float" (validated float data), "index" (class-index labels t),
# "onehot" (one-hot labels t), "book" (MulLayer/AddLayer operands: the book's plain NumPy
# arithmetic, so NumPy's semantics), "param" (an optimizer's parameter, updated in place,
# so it must be a writable C-contiguous native float array). A missing kind means the
# corruption does not apply.
GENERIC = {
    "float16": (
        cast(np.float16),
        {"float": TypeError, "index": TypeError, "onehot": SAME, "book": SAME, "param": TypeError},
    ),
    "float128": (
        cast(np.longdouble),
        {"float": TypeError, "index": TypeError, "onehot": TypeError, "param": TypeError},
    ),
    "int64": (
        cast(np.int64),
        {"float": TypeError, "onehot": SAME, "book": SAME, "param": TypeError},
    ),
    "int8": (cast(np.int8), {"index": SAME, "onehot": SAME}),
    "uint64": (cast(np.uint64), {"index": SAME}),
    "bool": (
        cast(bool),
        {"float": TypeError, "index": TypeError, "onehot": SAME, "param": TypeError},
    ),
    "object": (
        cast(object),
        {"float": TypeError, "index": TypeError, "onehot": TypeError, "param": TypeError},
    ),
    "complex": (
        cast(np.complex128),
        {"float": TypeError, "index": TypeError, "onehot": TypeError, "param": TypeError},
    ),
    "str": (
        cast(str),
        {"float": TypeError, "index": TypeError, "onehot": TypeError, "param": TypeError},
    ),
    "nan": (put(np.nan), {"float": SAME, "onehot": ValueError, "book": SAME, "param": SAME}),
    "inf": (put(np.inf), {"float": SAME, "onehot": ValueError, "book": SAME, "param": SAME}),
    "-inf": (put(-np.inf), {"float": SAME, "onehot": ValueError, "book": SAME, "param": SAME}),
    "readonly": (
        readonly,
        {"float": SAME, "index": SAME, "onehot": SAME, "book": SAME, "param": ValueError},
    ),
    "fortran": (fortran, {"float": SAME, "onehot": SAME, "book": SAME, "param": ValueError}),
    "strided": (
        strided,
        {"float": SAME, "index": SAME, "onehot": SAME, "book": SAME, "param": ValueError},
    ),
    "reversed": (
        reversed_view,
        {"float": SAME, "index": SAME, "onehot": SAME, "book": SAME, "param": ValueError},
    ),
    "byteswapped": (
        byteswapped,
        {"float": SAME, "index": SAME, "onehot": SAME, "book": SAME, "param": ValueError},
    ),
    "list": (listed, {"float": SAME, "index": SAME, "onehot": SAME, "param": TypeError}),
}

KINDS = {  # entry -> {argument: kind}; scalars (SoftmaxWithLoss dout) get specific cases
    "Relu": {"x": "float", "dout": "float"},
    "Sigmoid": {"x": "float", "dout": "float"},
    "Affine": {"x": "float", "W": "float", "b": "float", "dout": "float"},
    "SoftmaxWithLoss": {"x": "float", "t": "index"},
    ONEHOT: {"x": "float", "t": "onehot"},
    "MulLayer": {"x": "book", "y": "book", "dout": "book"},
    "AddLayer": {"x": "book", "y": "book", "dout": "book"},
    "TwoLayerNet": {"x": "float", "t": "index"},
    "TwoLayerNet-onehot": {"x": "float", "t": "onehot"},
    "TwoLayerNet.accuracy": {"x": "float", "t": "index"},
    **{
        name: {"params['W']": "param", "params['b']": "param", "grads['W']": "float"}
        for name in ("SGD", "Momentum", "AdaGrad", "Adam")
    },
}


def _bad(entry, arg, name, transform, error=ValueError):
    return (entry, arg, name, transform, Raises(error, arg))


# Shape, label-value and scalar cases specific to one entry and argument:
# (entry, argument, case name, transform, outcome).
SPECIFIC = [
    # Relu/Sigmoid take x of any shape; dout must have x's shape.
    *[
        row
        for entry in ("Relu", "Sigmoid")
        for row in [
            _bad(entry, "dout", "extra_axis", lambda a: a[..., None]),
            _bad(entry, "dout", "short_batch", lambda a: a[:-1]),
            _bad(entry, "dout", "transposed_shape", lambda a: a.T),
            _bad(entry, "dout", "scalar", replace(1.0)),
            _bad(entry, "dout", "none", replace(None), TypeError),
        ]
    ],
    _bad("Affine", "x", "rank1", lambda a: a[0]),
    _bad("Affine", "x", "empty_batch", lambda a: a[:0]),
    _bad("Affine", "x", "wrong_features", lambda a: a[:, :-1]),
    _bad("Affine", "x", "none", replace(None), TypeError),
    _bad("Affine", "W", "rank1", lambda a: a[0]),
    _bad("Affine", "W", "rank3", lambda a: a[None]),
    ("Affine", "W", "wrong_outputs", lambda a: a[:, :-1], Raises(ValueError, "b")),
    ("Affine", "b", "row_1xM", lambda a: a[None], SAME),  # broadcasts, as in the book
    _bad("Affine", "b", "rank3", lambda a: a[None, None]),
    _bad("Affine", "b", "column_Mx1", lambda a: a[:, None]),
    ("Affine", "b", "number", replace(0.5), SAME),  # broadcasts, as in the book
    _bad("Affine", "b", "numpy_scalar", replace(np.float64(0.5))),
    _bad("Affine", "b", "wrong_length", lambda a: a[:-1]),
    _bad("Affine", "dout", "rank1", lambda a: a[0]),
    _bad("Affine", "dout", "short_batch", lambda a: a[:-1]),
    _bad("Affine", "dout", "wrong_width", lambda a: a[:, :-1]),
    *[
        row
        for entry in ("SoftmaxWithLoss", ONEHOT)
        for row in [
            _bad(entry, "x", "rank3", lambda a: a[None]),
            _bad(entry, "x", "empty_batch", lambda a: a[:0]),
            _bad(entry, "x", "no_classes", lambda a: a[:, :0]),
            _bad(entry, "t", "short", lambda a: a[:-1]),
            _bad(entry, "t", "long", lambda a: np.concatenate([a, a[:1]])),
            _bad(entry, "t", "rank4", lambda a: a[..., None, None]),
            _bad(entry, "t", "scalar", replace(1)),
            _bad(entry, "t", "none", replace(None)),
            (entry, "dout", "two", replace(2.0), SAME),
            (entry, "dout", "int", replace(3), SAME),
            (entry, "dout", "nan", replace(np.nan), SAME),
            (entry, "dout", "float32", replace(np.float32(0.5)), SAME),
            _bad(entry, "dout", "array", replace(np.ones(N))),
            _bad(entry, "dout", "complex", replace(1j), TypeError),
            _bad(entry, "dout", "bool", replace(True), TypeError),
            _bad(entry, "dout", "str", replace("1"), TypeError),
            _bad(entry, "dout", "none", replace(None), TypeError),
        ]
    ],
    _bad("SoftmaxWithLoss", "t", "out_of_range", put(C)),
    _bad("SoftmaxWithLoss", "t", "huge", put(2**40)),
    _bad("SoftmaxWithLoss", "t", "negative", put(-1)),
    _bad("SoftmaxWithLoss", "t", "float_valued", cast(np.float64), TypeError),
    _bad(ONEHOT, "t", "too_wide", lambda a: np.eye(C + 1)[LABELS]),
    _bad(ONEHOT, "t", "too_narrow", lambda a: a[:, :-1]),
    _bad(ONEHOT, "t", "half", lambda a: a / 2),
    _bad(ONEHOT, "t", "two_ones", put(1.0, index=1)),
    _bad(ONEHOT, "t", "zero_row", lambda a: a * (np.arange(N) > 0)[:, None]),
    _bad(ONEHOT, "t", "minus_one", lambda a: -a),
    _bad(ONEHOT, "t", "soft_labels", lambda a: 0.8 * a + 0.2 / C),
    *[
        row
        for entry in ("TwoLayerNet", "TwoLayerNet.accuracy")
        for row in [
            _bad(entry, "x", "rank1", lambda a: a[0]),
            _bad(entry, "x", "empty_batch", lambda a: a[:0]),
            _bad(entry, "x", "wrong_features", lambda a: a[:, :-1]),
            _bad(entry, "t", "short", lambda a: a[:-1]),
            _bad(entry, "t", "one_label", lambda a: a[:1]),
            _bad(entry, "t", "out_of_range", put(C)),
            _bad(entry, "t", "negative", put(-1)),
            _bad(entry, "t", "float_valued", cast(np.float64), TypeError),
        ]
    ],
    _bad("TwoLayerNet-onehot", "t", "too_wide", lambda a: np.eye(C + 1)[LABELS]),
    _bad("TwoLayerNet-onehot", "t", "half", lambda a: a / 2),
    *[
        row
        for entry in ("SGD", "Momentum", "AdaGrad", "Adam")
        for row in [
            _bad(entry, "grads['W']", "transposed_shape", lambda a: a.T),
            _bad(entry, "grads['b']", "extra_axis", lambda a: a[None]),
            # a plain number is a param (the book's optimizer_compare_naive.py); an array
            # gradient for it does not fit
            _bad(entry, "params['b']", "scalar", replace(0.5), ValueError),
            _bad(entry, "lr", "none", replace(None), TypeError),
            _bad(entry, "lr", "str", replace("0.1"), TypeError),
            _bad(entry, "lr", "array", replace(np.full(M, 0.1))),
            _bad(entry, "lr", "complex", replace(0.1j), TypeError),
            (entry, "lr", "int", replace(1), SAME),
            (entry, "lr", "nan", replace(np.nan), SAME),
        ]
    ],
]


@dataclass(frozen=True)
class Case:
    entry: str
    arg: str
    name: str
    transform: object
    outcome: object

    @property
    def id(self):
        return f"{self.entry}-{self.arg}-{self.name}"

    def args(self):
        """The entry's valid arguments with this case's one corrupted."""
        args = copy.deepcopy(ENTRIES[self.entry].args)
        args[self.arg] = self.transform(args[self.arg])
        return args


def _cases():
    for entry, kinds in KINDS.items():
        for arg, kind in kinds.items():
            for name, (transform, outcomes) in GENERIC.items():
                outcome = outcomes.get(kind)
                one_d = np.ndim(ENTRIES[entry].args[arg]) < 2
                if outcome is None or (name == "fortran" and one_d):
                    continue
                if outcome is not SAME:
                    outcome = Raises(outcome, arg)
                yield Case(entry, arg, name, transform, outcome)
    for row in SPECIFIC:
        yield Case(*row)


CASES = list(_cases())


# -- the tests -----------------------------------------------------------------------


def _as_arrays(args):
    """The book's code needs arrays where fastbp accepts lists."""
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in args.items()}


def _native(dtype):
    return dtype.newbyteorder("=")


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case):
    args = case.args()
    before = copy.deepcopy(args)
    writeable = {k: v.flags.writeable for k, v in args.items() if isinstance(v, np.ndarray)}
    entry = ENTRIES[case.entry]
    if case.outcome is SAME:
        got = entry.run(args)
        with np.errstate(all="ignore"):  # the book's NumPy warns on NaN/inf inputs; expected
            want = entry.expect(_as_arrays(copy.deepcopy(before)))
        for name, value in want.items():
            assert np.asarray(got[name]).dtype == _native(np.asarray(value).dtype), name
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=1e-15, err_msg=name)
    else:
        arg = re.escape(case.outcome.arg)
        with pytest.raises(case.outcome.type, match=rf"(?<!\w){arg}(?!\w)"):
            entry.run(args)
    for name, value in before.items():
        if case.outcome is SAME and name in entry.updates:
            continue
        assert type(args[name]) is type(value), f"{name} changed type"
        if isinstance(value, np.ndarray):
            assert args[name].dtype == value.dtype, f"{name} changed dtype"
            assert args[name].flags.writeable == writeable[name]
        np.testing.assert_array_equal(args[name], value, err_msg=f"{name} was modified")


# -- misuse outside the argument matrix ------------------------------------------------


@pytest.mark.parametrize("entry", ["Relu", "Sigmoid", "Affine", "SoftmaxWithLoss"])
def test_backward_before_forward(entry):
    args = ENTRIES[entry].args
    layer = layers.Affine(args["W"], args["b"]) if entry == "Affine" else getattr(layers, entry)()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(args["dout"])


def test_labels_changed_after_forward_stay_safe():
    """backward uses the labels validated in forward, even if the caller reuses t's buffer."""
    args = ENTRIES["SoftmaxWithLoss"].args
    t = args["t"].copy()
    layer = layers.SoftmaxWithLoss()
    layer.forward(args["x"], t)
    t[:] = 10**9  # would index far out of bounds if backward read t again
    _, y = ref.softmax_ce_forward(args["x"], args["t"])
    np.testing.assert_allclose(layer.backward(), ref.softmax_ce_backward(y, args["t"]), rtol=RTOL)


def test_weights_reshaped_after_forward():
    args = ENTRIES["Affine"].args
    layer = layers.Affine(args["W"], args["b"])
    layer.forward(args["x"])
    layer.W = np.ones((K + 1, M))
    with pytest.raises(ValueError, match=r"(?<!\w)W(?!\w)"):
        layer.backward(args["dout"])


@pytest.mark.parametrize("entry", ["Relu", "Sigmoid"])
def test_empty_activation_input_gives_empty_results(entry):
    """Relu and Sigmoid take any shape, so an empty x is valid: empty results, like NumPy."""
    x = np.empty((0, K))
    got = ENTRIES[entry].run({"x": x, "dout": np.empty((0, K))})
    assert all(value.shape == (0, K) and value.dtype == np.float64 for value in got.values())
