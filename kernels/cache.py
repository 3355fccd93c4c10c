"""Numba's on-disk cache (``cache=True``) for fastbp's own kernels, made to fail safe.

Plain ``cache=True`` has two failure modes that would break every later run:

- a truncated or garbage index or data file in the cache raises (``UnpicklingError``,
  ``EOFError``, ...) on every load, and Numba cannot save over it either;
- with no writable cache directory (a read-only install, no writable home, no
  ``NUMBA_CACHE_DIR``) the decorator itself raises "no locator available" at import.

Importing this module (``fastbp.kernels`` does, before any kernel module) hooks Numba's
``enable_caching`` of jit dispatchers and cfuncs for functions defined in fastbp only
(``__module__`` starting with "fastbp."); other Numba code in the process is untouched.
fastbp's functions get a ``KernelCache``, which

- looks in Numba's usual places, then in a private per-user directory under the temp dir
  (created mode 0700; not used unless it is a directory this user owns that nobody else
  can write to, since loading a cache entry unpickles it);
- on any error loading an entry: warns, drops the function's index file and compiles the
  kernel again (the fresh build is saved over the bad entry: the cache recovers);
- on any error saving: drops the index and retries once, else stops caching the function
  for this process (the compiled kernel is used all the same);

and where no directory is usable at all, Numba's ``NullCache``: the kernels compile in
every process.
"""

import contextlib
import os
import stat
import tempfile
import warnings

from numba.core import caching, ccallback, dispatcher

PREFIX = "fastbp."  # the modules whose functions get a KernelCache


class CacheWarning(RuntimeWarning):
    """A Numba cache entry of a fastbp kernel was unreadable and is rebuilt."""


def private_dir():
    """The per-user cache root under the temp dir, or None where it is not safe to use."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        root = os.path.join(
            tempfile.gettempdir(), f"fastbp-numba-cache-{'user' if uid is None else uid}"
        )
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError:  # no usable temp dir at all
        return None
    info = os.lstat(root)
    mine = uid is None or info.st_uid == uid
    if not stat.S_ISDIR(info.st_mode) or not mine or info.st_mode & 0o022:
        return None
    return root


class PrivateTempLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba cache locator for ``private_dir()``: the last place a KernelCache looks."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(private_dir(), self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        if private_dir() is None:
            return None
        return super().from_function(py_func, py_file)  # checks that it is writable


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [*caching.CompileResultCacheImpl._locator_classes, PrivateTempLocator]


class KernelCache(caching.FunctionCache):
    """A ``FunctionCache`` that recovers from unreadable entries and failed saves."""

    _impl_class = _Impl

    def _drop_index(self, error, doing):
        path = self._cache_file._index_path
        warnings.warn(
            f"fastbp: {doing} Numba cache entry for {self._name} failed "
            f"({type(error).__name__}: {error}); it is rebuilt ({path})",
            CacheWarning,
            stacklevel=2,
        )
        with contextlib.suppress(OSError):
            os.remove(path)

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as error:  # whatever a damaged file raises: compile instead
            self._drop_index(error, "loading the")
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as first:
            self._drop_index(first, "saving a")
            try:
                super().save_overload(sig, data)
            except Exception:
                self.disable()


def cache_for(py_func):
    """A ``KernelCache`` for ``py_func``, or a ``NullCache`` where none can be set up."""
    try:
        return KernelCache(py_func)
    except Exception:  # "no locator available", an unreadable source file
        return caching.NullCache()


def _hooked(original, function_attribute):
    def enable_caching(self):
        py_func = getattr(self, function_attribute)
        if getattr(py_func, "__module__", "").startswith(PREFIX):
            self._cache = cache_for(py_func)
        else:
            original(self)

    enable_caching.fastbp_original = original
    return enable_caching


def install():
    """Hook ``enable_caching`` of Numba's dispatchers and cfuncs (once)."""
    for cls, attribute in ((dispatcher.Dispatcher, "py_func"), (ccallback.CFunc, "_pyfunc")):
        if not hasattr(cls.enable_caching, "fastbp_original"):
            cls.enable_caching = _hooked(cls.enable_caching, attribute)


install()
