"""Bytes an incremental state-dir checkpoint writes, against the rows it must.

Trains an embedding table with lazy Adam for ``--steps`` batches of
``--batch`` ids, saves in full, trains as many steps again and saves a delta
(numbadam.save_state_dir), then prints the delta's bytes next to the bytes of
the rows those steps touched (the union of the batches' ids, counted here,
times the row bytes of the table, ``m`` and ``v``). The goal (#14): the delta
writes at most about 2x those bytes.

Run from a checkout (PYTHONPATH so the checkout's numbadam is imported)::

    PYTHONPATH=$PWD python asv_bench/incremental_checkpoint.py \
        --rows 1000000 --width 16 --steps 100 --batch 4096 [--zipf 1.1] \
        [--slot-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

import numbadam


def _ids(rng, rows, batch, zipf):
    if zipf:
        ids = rng.zipf(zipf, batch) - 1
        return np.minimum(ids, rows - 1).astype(np.int64)
    return rng.integers(0, rows, batch)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--zipf", type=float, default=0.0, help="0: uniform ids")
    ap.add_argument("--slot-dir", default=None, help="slots as memmaps there")
    ap.add_argument("--out", default=None, help="checkpoint folder (else a temp)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    table = np.array(rng.standard_normal((args.rows, args.width)), np.float32)
    kw = {} if args.slot_dir is None else {"slot_dir": args.slot_dir}
    opt = numbadam.Adam(1e-3, sparse_mode="lazy", **kw)
    vals = np.array(rng.standard_normal((args.batch, args.width)), np.float32)

    def train(touched=None):
        for _ in range(args.steps):
            ids = _ids(rng, args.rows, args.batch, args.zipf)
            if touched is not None:
                touched[ids] = True
            g = numbadam.IndexedSlices(vals, ids, table.shape)
            opt.apply_gradients([(g, table)])

    out = args.out or os.path.join(tempfile.mkdtemp(), "ckpt")
    train()
    t0 = time.perf_counter()
    full = numbadam.save_state_dir(out, opt, {"table": table})
    t_full = time.perf_counter() - t0
    touched = np.zeros(args.rows, bool)
    train(touched)
    t0 = time.perf_counter()
    delta = numbadam.save_state_dir(out, opt, {"table": table})
    t_delta = time.perf_counter() - t0
    n = int(touched.sum())
    row_bytes = 3 * args.width * table.itemsize  # table, m and v
    on_disk = sum(
        os.path.getsize(os.path.join(out, f)) for f in delta.files
    )  # (the files this save wrote, the manifest included)
    report = {
        "rows": args.rows,
        "width": args.width,
        "steps": args.steps,
        "batch": args.batch,
        "zipf": args.zipf,
        "touched_rows": n,
        "touched_bytes": n * row_bytes,
        "delta_kind": delta.kind,
        "delta_bytes": delta.bytes_written,
        "delta_files_bytes": on_disk,
        "ratio": delta.bytes_written / max(1, n * row_bytes),
        "full_bytes": full.bytes_written,
        "full_s": round(t_full, 3),
        "delta_s": round(t_delta, 3),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
