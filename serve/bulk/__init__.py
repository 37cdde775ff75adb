"""Cluster a whole collection offline on Ray Data: `python -m serve.bulk SOURCE --output OUT ...`.

- `source`: SOURCE (folder, glob, .txt/.parquet list, URI) -> a manifest of paths, one row group per block.
- `worker`: the model actor: a block of paths -> decoded with the gateway's preprocessing -> the gateway's
  backend (embedded onnxruntime or Triton) -> one Parquet shard, written atomically.
- `job`: the driver: checks before any Ray work, resume (blocks without a shard), the actor pool, progress.
- `report`: summary.json and one gallery PNG per cluster, from the shards.

Ray (the `bulk` extra) is imported only when a job runs: the gateway never needs it.
"""
