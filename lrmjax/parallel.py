"""Device mesh, logical-axis rules and sharding helpers.

One mesh with axes ('data', 'fsdp', 'tensor'). Params carry logical axis names;
`LOGICAL_RULES` maps each logical name to mesh axes. A dimension that a mesh axis does not
divide is replicated instead (e.g. 2 KV heads on a 4-way tensor axis), so any preset runs on any
mesh. This module knows no model: `lrmjax.models.sharding` applies these rules to the
transformer's params.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (None = replicated). Batch dims are split over data and fsdp
# (FSDP shards params over 'fsdp' and gathers them per layer; the batch uses both axes).
LOGICAL_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "lora_rank": None,  # LoRA adapters: sharded like their kernel, the rank axis replicated
    "act_batch": ("data", "fsdp"),
    "act_len": None,
    "act_embed": None,
    "act_heads": "tensor",
}


def mesh_shape(shape: Mapping[str, int] | Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolves a mesh shape (dict by axis name or a 3-tuple; one entry may be -1)."""
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"Unknown mesh axes {sorted(unknown)}; valid axes: {MESH_AXES}")
        dims = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        dims = [int(x) for x in shape]
        if len(dims) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(dims)} must have {len(MESH_AXES)} entries "
                             f"{MESH_AXES}")
    if dims.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(dims)}: at most one axis may be -1")
    if any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"mesh shape {tuple(dims)}: sizes must be positive or -1")
    fixed = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if num_devices % fixed:
            raise ValueError(f"mesh shape {tuple(dims)} does not divide the {num_devices} "
                             "devices")
        dims[dims.index(-1)] = num_devices // fixed
    if math.prod(dims) != num_devices:
        named = dict(zip(MESH_AXES, dims, strict=True))
        raise ValueError(f"mesh shape {named} needs {math.prod(dims)} "
                         f"devices but {num_devices} are available")
    return tuple(dims)


def make_mesh(shape: Mapping[str, int] | Sequence[int] = (-1, 1, 1),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with Auto axis types.

    Auto (not Explicit) axis types let XLA's sharding propagation place intermediate values;
    under Explicit types a plain embedding gather needs hand-written out-shardings.
    """
    devices = list(jax.devices() if devices is None else devices)
    dims = mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(dims), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axes_for(name: str | None, rules: Mapping[str, Any]) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in rules:
        raise ValueError(f"logical axis {name!r} has no sharding rule; rules: {sorted(rules)}")
    axes = rules[name]
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical: PartitionSpec | Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, rules: Mapping[str, Any] | None = None) -> PartitionSpec:
    """Maps logical names to a mesh PartitionSpec for an array of `shape`.

    A mesh axis is used at most once per array, and only where it divides the dimension;
    otherwise that dimension stays replicated over it.
    """
    rules = LOGICAL_RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for name, dim in zip(tuple(logical), shape, strict=True):
        axes = []
        size = 1
        for axis in _mesh_axes_for(name, rules):
            n = mesh.shape[axis]
            if axis in used or n == 1 or dim % (size * n):
                continue
            axes.append(axis)
            size *= n
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


def tree_shardings(logical_tree: Any, shape_tree: Any, mesh: Mesh,
                   rules: Mapping[str, Any] | None = None) -> Any:
    """NamedShardings for a tree of arrays given a matching tree of logical PartitionSpecs."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, logical_to_spec(spec, x.shape, mesh, rules)),
        logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def constrain(x: jax.Array, logical: Sequence[str | None],
              rules: Mapping[str, Any] | None = None) -> jax.Array:
    """`x` constrained to the sharding its logical axis names map to on the mesh in use while
    it is traced (`in_mesh`); unchanged when there is none (a single device, a test calling
    a model directly). A name whose mesh axes do not divide its dimension leaves that
    dimension replicated, as for params (`logical_to_spec`).

    Activations need this where XLA's sharding propagation would otherwise follow the
    params: with FSDP the params are split over 'embed', and unconstrained it splits the
    hidden states over 'embed' too and replicates the batch on every device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh, rules))


def in_mesh(fn: Callable[..., Any], mesh: Mesh | None) -> Callable[..., Any]:
    """`fn` traced with `mesh` in use (`jax.sharding.use_abstract_mesh`), so that the
    activation constraints of `constrain` apply inside it: wrap a step function in it before
    `jax.jit`. None leaves `fn` as it is."""
    if mesh is None:
        return fn

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    # jax names the program after the function ("jit(rl_train_step)"), also through a partial.
    wrapped.__name__ = getattr(fn, "__name__", None) or getattr(fn, "func", fn).__name__
    return wrapped


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Mapping[str, Any] | None = None
                   ) -> NamedSharding:
    """Sharding of a batch-major array: leading dim over the batch axes, rest replicated."""
    axes = _mesh_axes_for("batch", LOGICAL_RULES if rules is None else rules)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> int:
    """The number of shards of the batch dimension: global batch sizes must be multiples."""
    axes = _mesh_axes_for("batch", LOGICAL_RULES if rules is None else rules)
    return math.prod(mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ------------------------------------------------------------------------------ multi-host
# Host data (prompts, rewards, token ids) is process-local: each process owns the block of
# rows of a batch-major global array that its devices hold. With one process these helpers
# reduce to device_put / np.asarray.


def host_row_block(mesh: Mesh, global_rows: int) -> slice:
    """Rows [start, stop) of a batch-sharded [global_rows, ...] array held by this process.

    The trainer relies on process p owning the p-th equal block (prompt shards and reward
    rows are cut that way); a mesh whose batch axes interleave processes raises ValueError.
    """
    count, index = jax.process_count(), jax.process_index()
    if global_rows % count:
        raise ValueError(f"a batch of {global_rows} rows does not split over {count} hosts")
    per = global_rows // count
    want = slice(index * per, (index + 1) * per)
    if count > 1:
        held = batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows,)).values()
        start = min(idx[0].start or 0 for idx in held)
        stop = max(global_rows if idx[0].stop is None else idx[0].stop for idx in held)
        if (start, stop) != (want.start, want.stop):
            raise ValueError(
                f"process {index}'s devices hold batch rows {start}:{stop}, not the "
                f"block {want.start}:{want.stop}; build the mesh from jax.devices() so each "
                "host's devices are contiguous along the batch axes")
    return want


def explicit_transfer(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks `fn` as an explicit host <-> device transfer: it runs with transfers allowed,
    also under the RL loop's `jax.transfer_guard("disallow")`. The multi-host constructors it
    uses (`make_array_from_callback`, `process_allgather`) copy through paths the guard
    counts as implicit."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with jax.transfer_guard("allow"):
            return fn(*args, **kwargs)

    return wrapped


@explicit_transfer
def put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` that also works across hosts: a host value (the same
    on every host, e.g. a PRNG key or a fresh optimizer scalar) becomes a global array; an
    array that is already global is resharded."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


@explicit_transfer
def host_to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """A batch-sharded global array from this process's rows (the p-th block of the batch)."""
    local = np.asarray(local)
    sharding = batch_sharding(mesh, local.ndim)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


@explicit_transfer
def global_to_host(tree: Any) -> Any:
    """Every host's data, as numpy on every host: the full value of each global (possibly
    multi-host) array in `tree`, and each host-local numpy array concatenated over the
    processes in process order."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


@explicit_transfer
def host_rows(tree: Any, mesh: Mesh) -> Any:
    """This process's rows of each global array in `tree`, as numpy: for an array split over
    the batch axes (rows on axis 0 only), the p-th block of its rows (`host_row_block`),
    copied from the shards on this host's own devices (no communication, where
    `global_to_host` allgathers every host's rows); a replicated array (a scalar) whole."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def one(x: jax.Array) -> np.ndarray:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_shards[0].data)
        by_start: dict[int, Any] = {}
        for shard in x.addressable_shards:  # a replica (e.g. over 'tensor') counted once
            if any(i != slice(None) and (i.start or 0, i.stop) != (0, d)
                   for i, d in zip(shard.index[1:], x.shape[1:], strict=True)):
                raise ValueError(f"host_rows: an array of shape {x.shape} is split past its "
                                 "rows; use global_to_host")
            by_start.setdefault(shard.index[0].start or 0, shard.data)
        rows = host_row_block(mesh, x.shape[0])
        out = np.concatenate([np.asarray(by_start[k]) for k in sorted(by_start)])
        if out.shape[0] != rows.stop - rows.start:
            raise ValueError(f"host_rows: this host's shards hold {out.shape[0]} rows of "
                             f"{x.shape[0]}, not its block {rows.start}:{rows.stop}")
        return out

    return jax.tree.map(one, tree)


@explicit_transfer
def every_host(value: Any) -> list[Any]:
    """The JSON-serializable `value` of every host, in process order, on every host (a
    collective: every host calls it). One host: [value]."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = global_to_host(np.array([len(data)]))                     # [hosts]
    padded = np.zeros((1, int(sizes.max())), np.uint8)
    padded[0, :len(data)] = data
    rows = global_to_host(padded)                                     # [hosts, longest]
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes, strict=True)]


def apply_to_host_rows(fn: Any, params: Any, *local: np.ndarray, mesh: Mesh) -> Any:
    """Runs the jitted `fn(params, *batch)` on the global batch assembled from every host's
    rows and returns this host's rows of the (batch-major) outputs as numpy."""
    out = global_to_host(fn(params, *(host_to_global(x, mesh) for x in local)))
    rows = host_row_block(mesh, local[0].shape[0] * jax.process_count())
    return jax.tree.map(lambda x: x[rows], out)


@explicit_transfer
def main_host_first(fn: Any, name: str) -> Any:
    """Runs `fn()` on host 0, then on the other hosts once host 0 is done (for steps that
    write shared files the others then read, e.g. building a dataset cache)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    out = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"lrmjax: {name}")
    return out if jax.process_index() == 0 else fn()


@explicit_transfer
def same_on_all_hosts(value: bool) -> bool:
    """Host 0's `value` on every host (a decision every host must take the same way)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))
