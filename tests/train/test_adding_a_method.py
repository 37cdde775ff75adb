"""A sixth method defined entirely in this file (SimCLR + k-means on the embedding), registered at run time:
it trains on digits, exports with parity, and the embedded gateway and the bulk path serve it, extra
outputs included. One file + one registry entry is all a method needs (train/methods/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contract.metadata import ExtraOutput
from train.config import ARCHITECTURE, Config, Presets
from train.heads import mlp
from train.kmeans import spherical_kmeans
from train.losses.contrastive import nt_xent
from train.methods import METHODS, register
from train.methods.base import ClusteringMethod, EpochContext, StepContext


@dataclass
class SimCLRKMeansConfig(Config):
    temperature: float = field(default=0.5, metadata={"help": "NT-Xent temperature"})
    feature_dim: int = field(default=64, metadata={**ARCHITECTURE, "help": "embedding size"})


PRESETS: Presets = {
    "paper": {"*": dict(optimizer="adam", lr=1e-3, batch_size=128, epochs=6)},
    "fast": {"*": dict(optimizer="adam", lr=1e-3, batch_size=128, epochs=3)},
}


class SimCLRKMeans(ClusteringMethod):
    """SimCLR's NT-Xent on a projection; after every epoch, spherical k-means of the embeddings -> centroids."""

    Config = SimCLRKMeansConfig
    PRESETS = PRESETS

    def __init__(self, cfg: SimCLRKMeansConfig, in_channels: int, num_clusters: int,
                 mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__(cfg, in_channels, num_clusters, mean, std)
        self.projector = mlp(self.backbone.out_dim, 128, cfg.feature_dim)
        self.register_buffer("centroids", F.normalize(torch.randn(num_clusters, cfg.feature_dim), dim=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, step: StepContext) -> dict[str, torch.Tensor]:
        z1, z2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        return {"z1": z1, "z2": z2}

    def loss(self, outputs: dict[str, torch.Tensor], step: StepContext) -> dict[str, torch.Tensor]:
        return {"loss": nt_xent(outputs["z1"], outputs["z2"], self.cfg.temperature)}

    def head_outputs(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = F.normalize(self.projector(features), dim=1)
        similarity = embedding @ self.centroids.T
        return {"embedding": embedding, "probabilities": torch.softmax(similarity / 0.1, dim=1),
                "cluster": similarity.argmax(1), "similarity": similarity,
                "runner_up": similarity.topk(2, dim=1).indices[:, 1]}

    def extra_outputs(self) -> tuple[ExtraOutput, ...]:
        return (ExtraOutput("similarity", "float32", (self.num_clusters,), "cosine similarity to each centroid"),
                ExtraOutput("runner_up", "int64", (), "the second most similar centroid"))

    def on_epoch_end(self, ctx: EpochContext) -> None:
        result = spherical_kmeans(ctx.map_images(self.embed), self.num_clusters, restarts=3, generator=ctx.generator)
        self.centroids.copy_(result.centroids)


@pytest.fixture
def toy_method():
    register("simclr_kmeans", SimCLRKMeans)
    yield "simclr_kmeans"
    METHODS.pop("simclr_kmeans")


def test_a_method_from_one_file_trains_exports_and_is_served(toy_method, tmp_path):
    from contract.metadata import ModelMetadata
    from export.pipeline import export_run
    from export.triton import read_config
    from serve.client import Client
    from tests.support.runs import digit_images
    from tests.support.serving import files, gateway, torch_predict
    from train.methods import make_config
    from train.trainer import train

    run = tmp_path / "run"
    results = train(make_config(toy_method, dataset="digits", run_dir=str(run), progress=False))
    assert results["finished"] and results["method"] == toy_method
    assert results["metrics"]["nmi"] > 0.3  # k-means of pixels gets 0.74; random assignment gets about 0.01
    exported = export_run(run, tmp_path / "repo", None, log=lambda msg: None)
    assert exported.parity["passed"] and exported.name == "simclr_kmeans_digits"
    images = digit_images(12, 16)
    pngs = []
    for i, img in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(img[0], "L").save(path)
        pngs.append((path.name, path.read_bytes()))
    with gateway(tmp_path / "repo") as client:
        answer = client.post("/cluster", files=files(pngs))
        from_client = Client(http=client).cluster([tmp_path / name for name, _ in pngs])
    assert answer.status_code == 200, answer.text
    served = [r["cluster"] for r in answer.json()["results"]]
    reference = torch_predict(run, images)
    assert served == reference["cluster"].tolist()
    assert len(set(served)) > 1
    assert np.isfinite([r["probability"] for r in answer.json()["results"]]).all()

    # the extra outputs: declared once above, then recorded, configured, answered, written and read back
    version_dir = tmp_path / "repo" / exported.name / str(exported.version)
    assert [(e.name, e.dtype, e.shape) for e in ModelMetadata.read(version_dir / "metadata.json").extra_outputs] == \
        [("similarity", "float32", (10,)), ("runner_up", "int64", ())]
    head_config = read_config(tmp_path / "repo" / f"{exported.name}_head")
    assert [o.name for o in head_config.output][-2:] == ["similarity", "runner_up"]
    items = answer.json()["results"]
    np.testing.assert_allclose([r["similarity"] for r in items], reference["similarity"], atol=1e-4)
    assert [r["runner_up"] for r in items] == reference["runner_up"].tolist()
    assert [r.runner_up for r in from_client] == reference["runner_up"].tolist()
    bulk_rows = bulk(tmp_path / "bulk", tmp_path / "repo", [tmp_path / name for name, _ in pngs])
    assert [Path(p).name for p in bulk_rows["path"]] == [name for name, _ in pngs]
    assert [e["runner_up"] for e in bulk_rows["extras"]] == reference["runner_up"].tolist()
    np.testing.assert_allclose([e["similarity"] for e in bulk_rows["extras"]], reference["similarity"], atol=1e-4)


def bulk(out: Path, repository: Path, images: list[Path]) -> dict[str, list]:
    """Rows of a bulk job (real local Ray, one actor) over `images`, in listing order."""
    import pyarrow.dataset as pads

    listing = out / "images.txt"
    out.mkdir()
    listing.write_text("".join(f"{p}\n" for p in images))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "serve.bulk", str(listing), "--model-repository", str(repository),
                           "--output", str(out / "job"), "--actors", "1", "--num-cpus", "1"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout + done.stderr
    return pads.dataset(out / "job" / "shards", format="parquet").to_table().sort_by("index").to_pydict()
