"""The loss-driven API of an OptimizerV2 (SciPy's ``jac=True`` convention).

NumPy has no automatic differentiation, so the loss callables of
``minimize``, ``get_gradients`` and ``get_updates`` are zero-argument callables
returning ``(loss_value, [gradient per parameter])``. A mixin of
:class:`numbadam.OptimizerV2`; every step goes through its ``apply_gradients``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _dispatch
from ._types import IndexedSlices

__all__ = ["LossMixin"]


class LossMixin:
    """``minimize``, ``get_gradients``, ``get_updates``."""

    # ------------------------------------------------------------------
    # loss-driven API (SciPy's jac=True convention)
    # ------------------------------------------------------------------

    @staticmethod
    def _call_loss(loss: Callable, n: int) -> Tuple[Any, List[Any]]:
        if not callable(loss):
            raise TypeError(
                "loss must be a zero-argument callable returning "
                "(loss_value, [gradient per parameter])"
            )
        out = loss()
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(
                "loss() must return (loss_value, gradients) (SciPy's jac=True "
                f"convention), got {type(out).__name__}"
            )
        value, grads = out
        grads = list(grads)
        if len(grads) != n:
            raise ValueError(
                f"loss() returned {len(grads)} gradients for {n} parameters"
            )
        return value, grads

    def get_gradients(self, loss: Callable, params: Sequence[Any]) -> List[Any]:
        """Gradients of ``loss`` with respect to ``params`` (Keras 1 style).

        As in tf-keras, no clipping happens here: :meth:`apply_gradients`
        clips.

        Parameters
        ----------
        loss : callable
            ``loss() -> (loss_value, [gradient per parameter])``.
        params : sequence of arrays

        Returns
        -------
        list
            One gradient per parameter, as ``loss`` returned them.

        Raises
        ------
        ValueError
            If any gradient is ``None``.
        """
        params = list(params)
        _, grads = self._call_loss(loss, len(params))
        for i, (g, p) in enumerate(zip(grads, params)):
            if g is None:
                raise ValueError(
                    f"{self._label(p, i)} has `None` for gradient. Please make sure "
                    "that all of your ops have a gradient defined (i.e. are "
                    "differentiable)."
                )
        return grads

    def get_updates(self, loss: Callable, params: Sequence[Any]) -> List[Any]:
        """Apply one step from ``loss`` (Keras 1 style) and return ``[iterations]``.

        The gradients of :meth:`get_gradients` go through
        :meth:`apply_gradients`, which clips them, as in tf-keras.
        """
        params = list(params)
        grads = self.get_gradients(loss, params)
        return [self.apply_gradients(list(zip(grads, params)))]

    def minimize(
        self,
        loss: Callable,
        var_list: Union[Sequence[Any], Callable[[], Sequence[Any]]],
        grad_loss: Any = None,
        name: Optional[str] = None,
        tape: Any = None,
    ) -> Any:
        """Compute gradients with ``loss`` and apply them to ``var_list``.

        Parameters
        ----------
        loss : callable
            ``loss() -> (loss_value, [gradient per variable])``; a gradient may
            be ``None`` (skipped) or an :class:`~numbadam.IndexedSlices`.
        var_list : sequence of arrays, or a callable returning one
        grad_loss : float or array, optional
            The gradient of the final objective with respect to ``loss_value``;
            each gradient is multiplied by it (chain rule), as TF's ``grad_loss``.
        name : str, optional
            Ignored (Keras compatibility).
        tape : None
            Keras' GradientTape argument; must be ``None`` here.

        Returns
        -------
        object
            The loss value returned by ``loss``.
        """
        if tape is not None:
            raise TypeError("numbadam has no GradientTape: pass tape=None")
        if callable(var_list):
            var_list = var_list()
        var_list = list(var_list)
        value, grads = self._call_loss(loss, len(var_list))
        if grad_loss is not None:
            grads = [self._scale(g, grad_loss) for g in grads]
        self.apply_gradients(list(zip(grads, var_list)), name=name)
        return value

    @staticmethod
    def _scale(g: Any, factor: Any) -> Any:
        if g is None:
            return None
        values = g.values if isinstance(g, IndexedSlices) else g
        if _dispatch.is_device_array(values):
            raise TypeError(
                "grad_loss cannot scale CUDA gradients on the host; scale them on the "
                "device before minimize (or fold grad_loss into the loss callable)"
            )
        if isinstance(g, IndexedSlices):
            return IndexedSlices(
                np.asarray(g.values) * factor, g.indices, g.dense_shape
            )
        return g * factor

