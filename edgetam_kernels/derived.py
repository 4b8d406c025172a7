"""Tensors derived from a model's weights (folded, merged, converted) or from a shape alone
(position tables), kept between calls for as long as they are still right.

- `cached(store, slot, sources, compute)`: right while every source tensor is the same memory
  (same storage, offset, shape and strides) at the same in-place version. "Same storage" is a
  weak reference to the source's storage, not its address: a freed weight's address is soon
  handed to a new tensor of the same size (seen with 256 KB tensors on glibc), and an
  address-plus-version key would take the new weight for the old one.
- `table(store, key, build)`: a tensor that depends only on `key` (a shape, a device, a few
  constants), right until somebody edits it in place (its version counter moves).

Both keep their entries in a `DerivedCache` inside `store` (a patch state, or a module's
`__dict__`). It copies and pickles as an empty cache, so a copied or saved patched model
rebuilds what it needs on first use instead of carrying it (the position tables alone are
~85 MB at 1024) and never holds weak references into another model's storages.
"""

from __future__ import annotations

import weakref
from typing import Callable, Hashable, MutableMapping, Optional, Sequence

import torch
from torch import Tensor

_SLOT = "derived"


class DerivedCache(dict):
    """Entries that `cached` / `table` rebuild on demand: copies and pickles empty."""

    def __deepcopy__(self, memo):
        return DerivedCache()

    def __copy__(self):
        return DerivedCache()

    def __reduce__(self):
        return (DerivedCache, ())


def entries(store: MutableMapping) -> DerivedCache:
    """The DerivedCache kept in `store` (created on first use)."""
    cache = store.get(_SLOT)
    if not isinstance(cache, DerivedCache):
        cache = store[_SLOT] = DerivedCache()
    return cache


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter (and cannot change)
        return -1


def _state(t: Optional[Tensor]):
    """(storage, what else identifies t's current contents); None for None, False where it
    cannot be told (tensor subclasses without a storage)."""
    if t is None:
        return None
    try:
        return t.untyped_storage(), (t.data_ptr(), t.shape, t.stride(), _version(t), t.dtype,
                                     t.device)
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _same(stamp, now) -> bool:
    if stamp is None or now is None:
        return stamp is now
    # the weak reference is alive only while the stored storage is, so its memory (and address)
    # cannot have been handed to another tensor meanwhile
    return stamp[0]() is now[0] and stamp[1] == now[1]


def cached(store: Optional[MutableMapping], slot: Hashable, sources: Sequence[Optional[Tensor]],
           compute: Callable, extra: tuple = ()):
    """compute()'s result, kept in `store` under `slot` until a source tensor is replaced or
    changed in place, or `extra` changes. Computed on every call, and differentiably, without
    a store, under torch.compile (traced into the graph: no checks to guard on), when gradients
    for a source are wanted, and for sources whose storage cannot be inspected."""
    if (store is None or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in sources))):
        return compute()
    now = [_state(t) for t in sources]
    if any(s is False for s in now):
        return compute()
    cache = entries(store)
    hit = cache.get(slot)
    if (hit is None or hit[1] != tuple(extra) or len(hit[0]) != len(now)
            or not all(_same(a, b) for a, b in zip(hit[0], now))):
        # normal (not inference) tensors: usable later outside inference_mode too
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        stamps = tuple(None if s is None else (weakref.ref(s[0]), s[1]) for s in now)
        hit = cache[slot] = (stamps, tuple(extra), value)
    return hit[2]


def table(store: MutableMapping, key: Hashable, build: Callable[[], Tensor]) -> Tensor:
    """build()'s tensor for `key`, kept in `store` while nobody edits it in place."""
    cache = entries(store)
    hit = cache.get(("table", key))
    if hit is not None and hit[0]._version == hit[1]:
        return hit[0]
    # a normal tensor (not an inference one): it has a version counter, and works outside
    # inference_mode later
    with torch.inference_mode(False), torch.no_grad():
        t = build()
    cache[("table", key)] = (t, t._version)
    return t
