"""A matrix-factorization recommender trained with sparse Adam steps.

The model predicts a rating as ``mu + b_user[u] + b_item[i] + P[u] . Q[i]``
with user and item embedding tables ``P`` and ``Q`` and bias tables. Each batch
touches a few thousand rows of each table, so the gradients are
:class:`~numbadam.IndexedSlices` (one row per rating in the batch, duplicates
included), exactly what an embedding lookup produces in TensorFlow.

With TensorFlow's Adam semantics a sparse step still updates the whole table
(``m`` and ``v`` decay everywhere), which numbadam does in one fused pass.

The data set is synthetic and generated in memory from a seed: planted
low-rank preferences plus user and item biases, Zipf-distributed item
popularity and Gaussian noise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import numbadam

from ._common import Reporter, format_seconds, resume_or_start, save_epoch, warm_up

__all__ = [
    "MatrixFactorization",
    "Ratings",
    "RecommenderSettings",
    "make_ratings",
    "train_recommender",
    "train_recommender_distributed",
]


@dataclass(frozen=True)
class RecommenderSettings:
    """Sizes and hyperparameters of the recommender run.

    The defaults give embedding tables of 2.4 million parameters; see
    :meth:`quick` for the tiny configuration used in CI.

    Examples
    --------
    >>> from numbadam.cli.demo.recommender import RecommenderSettings
    >>> s = RecommenderSettings()
    >>> (s.users + s.items) * s.dim
    2400000
    >>> RecommenderSettings.quick().users
    2000
    """

    users: int = 40_000
    items: int = 10_000
    ratings: int = 1_600_000
    dim: int = 48
    rank: int = 8
    noise: float = 0.5
    zipf: float = 1.0
    test_fraction: float = 0.1
    batch_size: int = 4096
    epochs: int = 8
    learning_rate: float = 0.005
    l2: float = 0.1
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "RecommenderSettings":
        """A configuration that trains in well under a second."""
        base = cls(
            users=2000,
            items=500,
            ratings=60_000,
            dim=16,
            batch_size=2048,
            epochs=5,
            learning_rate=0.02,
        )
        return replace(base, **overrides)

    def identity(self) -> Dict[str, Any]:
        """Everything that shapes the trajectory (all but ``epochs``)."""
        d = asdict(self)
        del d["epochs"]
        return d

    def variable_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """The shapes of :class:`MatrixFactorization`'s float32 variables."""
        return {
            "user_embedding": (self.users, self.dim),
            "item_embedding": (self.items, self.dim),
            "user_bias": (self.users,),
            "item_bias": (self.items,),
            "global_mean": (),
        }


@dataclass
class Ratings:
    """A ratings data set split into train and held-out parts.

    Attributes
    ----------
    train_users, train_items, test_users, test_items : numpy.ndarray of int64
    train_ratings, test_ratings : numpy.ndarray of float32
    users, items : int
        Table sizes.
    """

    train_users: np.ndarray
    train_items: np.ndarray
    train_ratings: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray
    users: int
    items: int

    @property
    def global_mean(self) -> float:
        """Mean training rating: the trivial baseline's prediction."""
        return float(np.mean(self.train_ratings, dtype=np.float64))

    def baseline_rmse(self) -> float:
        """Held-out RMSE of always predicting :attr:`global_mean`."""
        err = self.test_ratings.astype(np.float64) - self.global_mean
        return float(np.sqrt(np.mean(err * err)))


def make_ratings(
    users: int,
    items: int,
    ratings: int,
    rank: int = 8,
    noise: float = 0.5,
    zipf: float = 1.0,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Ratings:
    """Generate a seeded synthetic ratings data set in memory.

    ``rating = 3.5 + b_user + b_item + p_user . q_item + noise * N(0, 1)`` with
    planted rank-``rank`` factors (their dot product has unit variance), user
    biases of standard deviation 0.3, item biases of 0.5, users drawn uniformly
    and items with Zipf popularity (the ``k``-th most popular item is drawn
    with probability proportional to ``k ** -zipf``). A random
    ``test_fraction`` of the ratings is held out.

    Parameters
    ----------
    users, items, ratings : int
        Number of users, items and ratings (a user may rate an item twice).
    rank : int, optional
        Rank of the planted preferences.
    noise : float, optional
        Standard deviation of the rating noise: the best achievable RMSE.
    zipf : float, optional
        Exponent of the item popularity law.
    test_fraction : float, optional
    seed : int, optional

    Returns
    -------
    Ratings

    Examples
    --------
    >>> from numbadam.cli.demo.recommender import make_ratings
    >>> data = make_ratings(users=100, items=50, ratings=1000, seed=1)
    >>> len(data.train_ratings), len(data.test_ratings)
    (900, 100)
    >>> data.baseline_rmse() > 0.5
    True
    """
    rng = np.random.default_rng([seed, 1])
    scale = rank**-0.25  # the dot product of two factor rows has unit variance
    p_true = rng.normal(0.0, scale, (users, rank))
    q_true = rng.normal(0.0, scale, (items, rank))
    b_user = rng.normal(0.0, 0.3, users)
    b_item = rng.normal(0.0, 0.5, items)
    popularity = np.arange(1, items + 1, dtype=np.float64) ** -zipf
    cdf = np.cumsum(popularity / popularity.sum())
    by_rank = rng.permutation(items)  # which item is k-th most popular
    item_rank = np.searchsorted(cdf, rng.random(ratings), side="right")
    item = by_rank[np.minimum(item_rank, items - 1)]
    user = rng.integers(0, users, ratings)
    rating = 3.5 + b_user[user] + b_item[item]
    rating += np.einsum("ij,ij->i", p_true[user], q_true[item])
    rating += noise * rng.standard_normal(ratings)
    order = rng.permutation(ratings)
    n_test = int(round(ratings * test_fraction))
    test, train = order[:n_test], order[n_test:]
    f32 = rating.astype(np.float32)
    return Ratings(
        user[train],
        item[train],
        f32[train],
        user[test],
        item[test],
        f32[test],
        users,
        items,
    )


class MatrixFactorization:
    """User/item embedding tables and biases, with hand-written gradients.

    Parameters
    ----------
    users, items, dim : int
        Table sizes.
    global_mean : float
        Initial value of the global offset ``mu`` (a trained dense scalar).
    l2 : float, optional
        Weight of ``l2 / 2 * (|P[u]|^2 + |Q[i]|^2)`` per rating.
    seed : int, optional
        Seeds the N(0, 0.1) initial embeddings; biases start at zero.

    Attributes
    ----------
    variables : dict of str to numpy.ndarray
        ``user_embedding`` (users, dim), ``item_embedding`` (items, dim),
        ``user_bias`` (users,), ``item_bias`` (items,), ``global_mean`` ().

    Examples
    --------
    >>> import numpy as np
    >>> import numbadam
    >>> from numbadam.cli.demo.recommender import MatrixFactorization
    >>> model = MatrixFactorization(users=10, items=5, dim=3, global_mean=3.0)
    >>> model.n_parameters
    61
    >>> u, i, r = np.array([0, 0, 7]), np.array([1, 2, 1]), np.full(3, 4.0, np.float32)
    >>> loss, grads = model.loss_and_gradients(u, i, r)
    >>> type(grads[0]).__name__, grads[0].indices.tolist()
    ('IndexedSlices', [0, 0, 7])
    >>> opt = numbadam.Adam(learning_rate=0.01)
    >>> _ = opt.apply_gradients(zip(grads, model.variables.values()))
    >>> model.loss_and_gradients(u, i, r)[0] < loss
    True
    """

    def __init__(
        self,
        users: int,
        items: int,
        dim: int,
        global_mean: float,
        l2: float = 0.1,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng([seed, 2])
        self.l2 = float(l2)
        self.variables: Dict[str, np.ndarray] = {
            "user_embedding": (0.1 * rng.standard_normal((users, dim))).astype(
                np.float32
            ),
            "item_embedding": (0.1 * rng.standard_normal((items, dim))).astype(
                np.float32
            ),
            "user_bias": np.zeros(users, np.float32),
            "item_bias": np.zeros(items, np.float32),
            "global_mean": np.array(global_mean, np.float32),
        }

    @property
    def n_parameters(self) -> int:
        """Total number of trained scalars."""
        return int(sum(v.size for v in self.variables.values()))

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings (float32) for pairs ``(users[k], items[k])``."""
        v = self.variables
        p = v["user_embedding"][users]
        q = v["item_embedding"][items]
        return (
            v["global_mean"]
            + v["user_bias"][users]
            + v["item_bias"][items]
            + np.einsum("ij,ij->i", p, q)
        )

    def rmse(
        self,
        users: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray,
        chunk: int = 65536,
    ) -> float:
        """Root-mean-square error over a set of ratings."""
        total = 0.0
        for s in range(0, len(ratings), chunk):
            err = self.predict(users[s : s + chunk], items[s : s + chunk])
            err = err.astype(np.float64) - ratings[s : s + chunk]
            total += float(np.dot(err, err))
        return float(np.sqrt(total / max(len(ratings), 1)))

    def loss_and_gradients(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray
    ):
        """Mean squared error of a batch and the gradients of the objective.

        The objective is ``mean(err**2) / 2 + l2 / 2 * mean(|P[u]|^2 + |Q[i]|^2)``.

        Returns
        -------
        loss : float
            The batch's mean squared error (before the step).
        gradients : list
            In :attr:`variables` order: IndexedSlices for the four tables (one
            row per rating, duplicates included) and a dense 0-d array for
            ``global_mean``.
        """
        err, grads = self.errors_and_gradients(users, items, ratings, len(ratings))
        return float(np.mean(err * err, dtype=np.float64)), grads

    def errors_and_gradients(
        self,
        users: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray,
        denominator: float,
    ):
        """Prediction errors of some ratings and their part of a batch gradient.

        The objective's terms of these ratings, divided by ``denominator``
        instead of their number: with ``denominator = B / size`` for a slice
        of a global batch of ``B`` ratings split over ``size`` ranks, the
        average of the ranks' gradients is the global batch's gradient.

        Returns
        -------
        errors : numpy.ndarray of float32
            Prediction minus rating, before the step.
        gradients : list
            As :meth:`loss_and_gradients`.
        """
        v = self.variables
        p = v["user_embedding"][users]
        q = v["item_embedding"][items]
        err = (
            v["global_mean"]
            + v["user_bias"][users]
            + v["item_bias"][items]
            + np.einsum("ij,ij->i", p, q)
            - ratings
        )
        n = np.float32(denominator)
        scaled = (err / n).astype(np.float32)
        reg = np.float32(self.l2) / n
        grad_p = scaled[:, None] * q + reg * p
        grad_q = scaled[:, None] * p + reg * q
        grads = [
            numbadam.IndexedSlices(grad_p, users, v["user_embedding"].shape),
            numbadam.IndexedSlices(grad_q, items, v["item_embedding"].shape),
            numbadam.IndexedSlices(scaled, users, v["user_bias"].shape),
            numbadam.IndexedSlices(scaled, items, v["item_bias"].shape),
            np.array(scaled.sum(dtype=np.float32), np.float32),
        ]
        return err, grads


def train_recommender(
    settings: RecommenderSettings,
    reporter: Optional[Reporter] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
    checkpoint: Optional[numbadam.Checkpoint] = None,
) -> Dict[str, Any]:
    """Generate the data, train the recommender and report every epoch.

    Parameters
    ----------
    settings : RecommenderSettings
    reporter : Reporter, optional
        Where progress and epoch lines go; silent when omitted.
    checkpoint_path : str, optional
        Save a checkpoint (model, optimizer, history) there after every epoch.
    resume : bool, optional
        Continue from ``checkpoint_path`` if it exists.
    checkpoint : numbadam.Checkpoint, optional
        ``checkpoint_path`` already read and checked (by
        :func:`~numbadam.cli.demo.prepare_demo`), to resume from.

    Returns
    -------
    dict
        ``settings``, ``n_parameters``, ``baseline_rmse``, ``history`` (one dict
        per epoch: ``epoch``, ``train_loss``, ``test_rmse``, ``seconds``,
        ``steps_per_s``, ``updates_per_s``) and ``final`` (the last epoch's).

    Examples
    --------
    >>> from numbadam.cli.demo.recommender import RecommenderSettings, train_recommender
    >>> s = RecommenderSettings.quick(users=300, items=100, ratings=6000, epochs=3)
    >>> result = train_recommender(s)
    >>> result["final"]["test_rmse"] < result["baseline_rmse"]
    True
    """
    reporter = reporter or Reporter(mode="silent")
    s = settings
    t0 = time.perf_counter()
    data = _ratings_for(s)
    gen_seconds = time.perf_counter() - t0
    baseline = data.baseline_rmse()
    model = MatrixFactorization(s.users, s.items, s.dim, data.global_mean, s.l2, s.seed)
    n_params = model.n_parameters
    n_train = len(data.train_ratings)
    steps_per_epoch = -(-n_train // s.batch_size)
    reporter.line(
        f"Matrix-factorization recommender: {s.users:,} users x {s.items:,} items, "
        f"{n_train:,} training and {len(data.test_ratings):,} held-out ratings "
        f"(generated in {gen_seconds:.1f} s)"
    )
    reporter.line(
        f"  {n_params:,} parameters (embedding dim {s.dim}); IndexedSlices gradients, "
        f"batch {s.batch_size}, {steps_per_epoch} Adam steps per epoch"
    )
    reporter.line(
        f"  trivial baseline (predict the global mean): held-out RMSE {baseline:.4f}"
        f"; noise floor {s.noise:.4f}"
    )

    opt, start, history = resume_or_start(
        "recommender",
        checkpoint_path,
        resume,
        model.variables,
        s.identity(),
        reporter,
        s.epochs,
        "test_rmse",
        checkpoint,
    )
    if opt is None:
        opt = numbadam.Adam(learning_rate=s.learning_rate)
    compile_seconds = warm_up(reporter)
    variables = list(model.variables.values())
    reporter.table_header(
        [
            "epoch",
            "train loss",
            "held-out RMSE",
            "baseline",
            "steps/s",
            "param updates/s",
            "time",
        ]
    )
    for row in history:
        reporter.table_row(_rec_row(row, baseline), resumed=True)
    for epoch in range(start, s.epochs):
        order = _epoch_order(s, epoch, n_train)
        losses = np.empty(steps_per_epoch)
        bar = reporter.bar(steps_per_epoch, f"recommender {epoch + 1}/{s.epochs}")
        t = time.perf_counter()
        for k in range(steps_per_epoch):
            idx = order[k * s.batch_size : (k + 1) * s.batch_size]
            loss, grads = model.loss_and_gradients(
                data.train_users[idx], data.train_items[idx], data.train_ratings[idx]
            )
            opt.apply_gradients(zip(grads, variables))
            losses[k] = loss
            if bar.due(k):
                rate = (k + 1) / (time.perf_counter() - t)
                bar.update(k + 1, f"loss {loss:.4f}, {rate * n_params:.2e} updates/s")
        seconds = time.perf_counter() - t
        bar.close()
        steps_per_s = steps_per_epoch / seconds
        row = {
            "epoch": epoch + 1,
            "train_loss": float(losses.mean()),
            "test_rmse": model.rmse(
                data.test_users, data.test_items, data.test_ratings
            ),
            "seconds": seconds,
            "steps_per_s": steps_per_s,
            "updates_per_s": steps_per_s * n_params,
        }
        history.append(row)
        reporter.table_row(_rec_row(row, baseline))
        save_epoch(
            "recommender",
            checkpoint_path,
            opt,
            model.variables,
            s.identity(),
            history,
            reporter,
        )
    return {
        "settings": asdict(s),
        "n_parameters": n_params,
        "n_train": n_train,
        "n_test": len(data.test_ratings),
        "baseline_rmse": baseline,
        "compile_seconds": compile_seconds,
        "resumed_from_epoch": start,
        "history": history,
        "final": history[-1] if history else None,
        "total_seconds": time.perf_counter() - t0,
    }


def _rec_row(row: Dict[str, Any], baseline: float) -> List[str]:
    return [
        str(row["epoch"]),
        f"{row['train_loss']:.4f}",
        f"{row['test_rmse']:.4f}",
        f"{baseline:.4f}",
        f"{row['steps_per_s']:.0f}",
        f"{row['updates_per_s']:.2e}",
        format_seconds(row["seconds"]),
    ]


def _ratings_for(s: RecommenderSettings) -> Ratings:
    return make_ratings(
        s.users, s.items, s.ratings, s.rank, s.noise, s.zipf, s.test_fraction, s.seed
    )


def _epoch_order(s: RecommenderSettings, epoch: int, n_train: int) -> np.ndarray:
    # The same shuffling in every run (and on every rank) of these settings.
    return np.random.default_rng([s.seed, 3, epoch]).permutation(n_train)


def train_recommender_distributed(
    settings: RecommenderSettings,
    mode: str = "sharded",
    comm: Any = None,
    reporter: Optional[Reporter] = None,
) -> Dict[str, Any]:
    """Train the recommender over MPI ranks, data-parallel or ZeRO-sharded (collective).

    Every rank generates the same data and initial model (rank 0's variables
    are broadcast besides) and walks the same shuffled batches of
    ``settings.batch_size`` ratings as :func:`train_recommender`. Each batch is
    split into ``size`` contiguous parts; a rank computes the gradients of its
    part divided by ``batch / size`` instead of its part's length, so that the
    optimizer's average over the ranks is the whole batch's gradient. The
    learning curve is therefore the same at any number of ranks, up to float32
    rounding (sums in another order); at one rank, mode ``"data"`` repeats
    :func:`train_recommender`'s curve exactly.

    Parameters
    ----------
    settings : RecommenderSettings
    mode : {"data", "sharded"}
        ``"data"``: :class:`~numbadam.distributed.DistributedAdam` (state
        replicated, IndexedSlices all-gathered). ``"sharded"``:
        :class:`~numbadam.distributed.ShardedAdam` (ZeRO stage 1: ``m`` and
        ``v`` split over the ranks).
    comm : optional
        See :func:`numbadam.distributed.get_communicator`.
    reporter : Reporter, optional
        Rank 0's output (the other ranks are silent); silent when omitted.

    Returns
    -------
    dict
        ``mode``, ``ranks``, ``settings``, ``n_parameters``, ``baseline_rmse``,
        ``epoch_train_loss`` (mean over the steps of the whole batch's mean
        squared error, the same on every rank) and ``epoch_rmse`` (held-out
        RMSE, evaluated on rank 0; empty on the other ranks).

    Examples
    --------
    >>> from numbadam.cli.demo.recommender import (
    ...     RecommenderSettings, train_recommender_distributed)
    >>> s = RecommenderSettings.quick(users=300, items=100, ratings=6000, epochs=2)
    >>> out = train_recommender_distributed(s, "sharded", comm="self")
    >>> out["ranks"], out["epoch_rmse"][-1] < out["baseline_rmse"]
    (1, True)
    """
    from numbadam.distributed import (
        DistributedAdam,
        ShardedAdam,
        broadcast_variables,
        get_communicator,
        partition,
    )

    if mode not in ("data", "sharded"):
        raise ValueError(f"mode must be 'data' or 'sharded', got {mode!r}")
    c = get_communicator(comm)
    reporter = reporter if reporter is not None and c.rank == 0 else None
    reporter = reporter or Reporter(mode="silent")
    s = settings
    data = _ratings_for(s)
    baseline = data.baseline_rmse()
    model = MatrixFactorization(s.users, s.items, s.dim, data.global_mean, s.l2, s.seed)
    variables = list(model.variables.values())
    broadcast_variables(variables, root=0, comm=c)
    cls = DistributedAdam if mode == "data" else ShardedAdam
    opt = cls(learning_rate=s.learning_rate, comm=c)
    n_train = len(data.train_ratings)
    steps_per_epoch = -(-n_train // s.batch_size)
    reporter.line(
        f"Matrix-factorization recommender on {c.size} rank"
        f"{'s' if c.size > 1 else ''} ({mode}: {cls.__name__}): "
        f"{s.users:,} users x {s.items:,} items, {n_train:,} training ratings, "
        f"{model.n_parameters:,} parameters"
    )
    reporter.line(
        f"  global batch {s.batch_size} split over the ranks, {steps_per_epoch} "
        f"Adam steps per epoch; baseline held-out RMSE {baseline:.4f}"
    )
    reporter.table_header(["epoch", "train loss", "held-out RMSE", "baseline", "time"])
    train_loss: List[float] = []
    rmse: List[float] = []
    for epoch in range(s.epochs):
        order = _epoch_order(s, epoch, n_train)
        sq_sums = np.zeros(steps_per_epoch)  # this rank's part of each step
        counts = np.zeros(steps_per_epoch)
        t = time.perf_counter()
        for k in range(steps_per_epoch):
            idx = order[k * s.batch_size : (k + 1) * s.batch_size]
            b = partition(len(idx), c.size)
            mine = idx[b[c.rank] : b[c.rank + 1]]
            err, grads = model.errors_and_gradients(
                data.train_users[mine],
                data.train_items[mine],
                data.train_ratings[mine],
                len(idx) / c.size,
            )
            opt.apply_gradients(zip(grads, variables))
            sq_sums[k] = np.sum(err * err, dtype=np.float64)
            counts[k] = len(idx)
        c.allreduce_sum_(sq_sums)
        train_loss.append(float(np.mean(sq_sums / counts)))
        seconds = time.perf_counter() - t
        if c.rank == 0:
            rmse.append(model.rmse(data.test_users, data.test_items, data.test_ratings))
            reporter.table_row(
                [
                    str(epoch + 1),
                    f"{train_loss[-1]:.4f}",
                    f"{rmse[-1]:.4f}",
                    f"{baseline:.4f}",
                    format_seconds(seconds),
                ]
            )
    return {
        "mode": mode,
        "ranks": c.size,
        "settings": asdict(s),
        "n_parameters": model.n_parameters,
        "baseline_rmse": baseline,
        "epoch_train_loss": train_loss,
        "epoch_rmse": rmse,
    }
