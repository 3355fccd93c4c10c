"""Kernels imported on first use, so that importing ``fastbp.layers`` loads no Numba.

``fastbp.layers`` and ``fastbp.checks`` bind each kernel name to a ``LazyKernel``; its
first call imports the kernel module (and Numba), puts the real kernel in the name's place
in the module's namespace and runs it. Later calls find the kernel itself: no overhead.
"""

import importlib


class LazyKernel:
    """Stands for ``module.attr`` (``attr`` defaults to ``name``) under ``name`` in
    ``namespace`` (a module's ``globals()``) until called."""

    def __init__(self, namespace, module, name, attr=None):
        self.namespace, self.module, self.name = namespace, module, name
        self.attr = attr or name

    def load(self):
        """The real kernel, which replaces this stand-in in the namespace (unless something
        else, e.g. a test's monkeypatch, has replaced it already)."""
        kernel = getattr(importlib.import_module(self.module), self.attr)
        if self.namespace.get(self.name) is self:
            self.namespace[self.name] = kernel
        return kernel

    def __call__(self, *args):
        return self.load()(*args)

    def __repr__(self):
        return f"<LazyKernel {self.module}.{self.attr} (not imported yet)>"
