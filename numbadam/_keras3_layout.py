"""The Keras 3 <-> numbadam mapping of ``optimizer/vars`` (numbadam.keras3).

``ROWS`` is the table: the per-variable optimizer variables of Keras 3's
``Adam``, in the order Keras creates them, and the numbadam slots that hold
them. State numbadam gains (EMA averages, gradient accumulators) is one row's
``slots`` and ``present``.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Tuple

GROUP = "optimizer/vars"


class Row(NamedTuple):
    """Per-variable Keras 3 optimizer variables, created for every variable."""

    keras: Tuple[str, ...]  # Keras' names ("{path}_{name}"), interleaved per variable
    slots: Optional[Tuple[str, ...]]  # numbadam's slots, same order; None: none yet
    keras_option: str  # the Keras 3 argument that creates them ("" if always)
    present: Callable[[Any], bool]  # whether a numbadam optimizer holds them
    # rows of one group are created in one loop over the variables, so their
    # entries interleave per variable (BaseOptimizer.build's averages and
    # accumulators)
    group: int = 0


def _never(optimizer: Any) -> bool:
    return False


def _always(optimizer: Any) -> bool:
    return True


def amsgrad(optimizer: Any) -> bool:
    return bool(getattr(optimizer, "amsgrad", False))


def accumulating(optimizer: Any) -> bool:
    # Keras 3's accumulators are the counter of calls' partners: the file's
    # ``iteration`` is that counter (numbadam's weights[0])
    return getattr(optimizer, "_accum_steps", None) is not None


def use_ema(optimizer: Any) -> bool:
    return bool(getattr(optimizer, "use_ema", False))


# In Keras 3's creation order (BaseOptimizer.build, then Adam.build), after
# ``iteration`` and ``learning_rate``. A row with ``slots=None`` is state
# numbadam does not hold yet: files with it are refused.
ROWS: Tuple[Row, ...] = (
    Row(("average",), ("average",), "use_ema=True", use_ema, group=0),
    Row(
        ("gradient_accumulator",), ("accumulator",), "gradient_accumulation_steps",
        accumulating, group=0,
    ),  # fmt: skip
    Row(("momentum", "velocity"), ("m", "v"), "", _always, group=1),
    Row(("velocity_hat",), ("vhat",), "amsgrad=True", amsgrad, group=2),
)

# slots whose values are never negative (an Adam second moment)
NON_NEGATIVE = ("v", "vhat")


class Entry(NamedTuple):
    """What one dataset of ``optimizer/vars`` holds."""

    keras: str  # "iteration", "learning_rate", or a per-variable Keras name
    var: Optional[int] = None  # position in var_list (per-variable entries)
    slot: Optional[str] = None  # numbadam slot name

    def describe(self) -> str:
        """A short description: "iteration", "momentum (m) of variable 0"..."""
        if self.var is None:
            return self.keras
        return f"{self.keras} ({self.slot}) of variable {self.var}"


ITERATION = ("iteration", None)


def role_of(entry: Entry) -> Tuple[Any, Any]:
    """(var, slot) of a per-variable entry, (keras name, None) of a scalar."""
    return (entry.keras, None) if entry.var is None else (entry.var, entry.slot)


def rows_of(optimizer: Any) -> List[Row]:
    return [row for row in ROWS if row.slots is not None and row.present(optimizer)]


def layout(optimizer: Any, n: int, with_lr: bool) -> List[Entry]:
    out = [Entry("iteration")]
    if with_lr:
        out.append(Entry("learning_rate"))
    rows = rows_of(optimizer)
    for group in sorted({row.group for row in rows}):
        members = [row for row in rows if row.group == group]
        for i in range(n):
            for row in members:
                for keras_name, slot in zip(row.keras, row.slots):
                    out.append(Entry(keras_name, i, slot))
    return out


def constant_lr(optimizer: Any) -> bool:
    # Keras 3 keeps a learning_rate variable only for a constant rate
    return not callable(getattr(optimizer, "learning_rate", None))


def fitting(count: int, n: int) -> List[str]:
    """The Keras 3 Adam configurations that write ``count`` datasets for ``n``."""
    optional = [row for row in ROWS if row.keras_option]
    per_var = sum(len(row.keras) for row in ROWS if not row.keras_option)
    out = []
    for lr in (True, False):
        for mask in range(1 << len(optional)):
            chosen = [r for k, r in enumerate(optional) if mask >> k & 1]
            size = per_var + sum(len(r.keras) for r in chosen)
            if 1 + lr + n * size == count:
                opts = [r.keras_option for r in chosen] or ["no options"]
                rate = "a constant learning rate" if lr else "a learning-rate schedule"
                out.append(f"{' + '.join(opts)} with {rate}")
    return out


def count_problem(count: int, n: int, optimizer: Any) -> str:
    wanted = [len(layout(optimizer, n, lr)) for lr in (True, False)]
    fits = fitting(count, n)
    hint = (
        f"; for {n} variables {count} entries fit a Keras 3 Adam with "
        + " or ".join(fits)
        if fits
        else f"; no Keras 3 Adam over {n} variables writes {count}"
    )
    unsupported = [r.keras_option for r in ROWS if r.slots is None]
    return (
        f"'{GROUP}' holds {count} entries, but this optimizer "
        f"(amsgrad={amsgrad(optimizer)}, use_ema={use_ema(optimizer)}) over {n} "
        f"variables needs {wanted[0]} "
        f"(a constant learning rate) or {wanted[1]} (a schedule){hint}. "
        f"Not supported yet: {', '.join(unsupported)}; otherwise check amsgrad, "
        "use_ema and that var_list is the model's trainable variables in Keras' order"
    )
