"""Agreement, not equality: how close a reduced-precision model's answers are to the fp32 graph's.

    report = measure(reference, candidate, Thresholds())   # head outputs by name: fp32 graph, int8 graph (or plans)
    check(report, "cc_digits_int8")                         # AgreementTooLow (export: exit 2) with the figures
    print(describe(report))

A quantized model cannot reproduce the fp32 graph within 1e-4 (the fp32 parity tolerance), nor does it need
to: what its users depend on is the cluster each image gets and, for search, the direction of its embedding.
So on images that were not used for calibration it is judged by the fraction of images whose cluster is the
fp32 graph's (`cluster_agreement`), the mean and the smallest cosine between the two embeddings of an image,
and the largest difference of any probability; every other integer output (CoHiClust's path) gets its own
agreement. It passes with cluster agreement >= `min_agreement` and mean cosine >= `min_cosine` (defaults 0.99
and 0.99). numpy only: export/tensorrt.py judges plans with it inside the serving container.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import CLUSTER, EMBEDDING, PROBABILITIES

MIN_AGREEMENT = 0.99
MIN_COSINE = 0.99


class AgreementTooLow(ValueError):
    """A reduced-precision model whose answers are too far from the fp32 graph's; the message has the figures."""


@dataclass(frozen=True)
class Thresholds:
    """What a reduced-precision model must reach against the fp32 graph to be exported (or its plans kept)."""

    min_agreement: float = MIN_AGREEMENT  # fraction of images whose cluster is the fp32 graph's
    min_cosine: float = MIN_COSINE  # mean cosine between an image's two embeddings

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Thresholds:
        return cls(**{k: float(v) for k, v in (data or {}).items() if k in cls.__dataclass_fields__})


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (n, D) arrays, in float64; a zero row has cosine 0 with anything."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)


def measure(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            thresholds: Thresholds = Thresholds()) -> dict[str, Any]:
    """The figures and the verdict of `candidate` against `reference` (head outputs of the same n images, by name;
    cluster may come as (n,) or Triton's (n, 1)). Never raises for low figures: see `check`."""
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise ValueError(f"outputs missing from the reduced-precision model: {missing}")
    count = len(reference[CLUSTER])
    if count == 0:
        raise ValueError("no images to judge agreement on")
    clusters = np.asarray(candidate[CLUSTER]).reshape(count) == np.asarray(reference[CLUSTER]).reshape(count)
    cosine = _cosine(np.asarray(reference[EMBEDDING]), np.asarray(candidate[EMBEDDING]))
    probability_diff = np.abs(np.asarray(candidate[PROBABILITIES], np.float64) - reference[PROBABILITIES])
    report: dict[str, Any] = {
        "num_images": count,
        "cluster_agreement": float(clusters.mean()),
        "cluster_mismatches": int((~clusters).sum()),
        "embedding_cosine_mean": float(cosine.mean()),
        "embedding_cosine_min": float(cosine.min()),
        "probability_max_abs_diff": float(probability_diff.max()),
        "outputs": {},
        "thresholds": asdict(thresholds),
    }
    for name, ref in reference.items():
        if name not in (CLUSTER, EMBEDDING, PROBABILITIES) and not np.issubdtype(ref.dtype, np.floating):
            same = (np.asarray(candidate[name]).reshape(ref.shape) == ref).reshape(count, -1).all(axis=1)
            report["outputs"][name] = {"agreement": float(same.mean()), "mismatches": int((~same).sum())}
    problems = []
    if not report["cluster_agreement"] >= thresholds.min_agreement:
        problems.append(f"cluster agreement {report['cluster_agreement']:.2%} < {thresholds.min_agreement:.2%}")
    if not report["embedding_cosine_mean"] >= thresholds.min_cosine:  # also catches NaN
        problems.append(f"mean embedding cosine {report['embedding_cosine_mean']:.4f} < {thresholds.min_cosine:.4f}")
    report.update(passed=not problems, problems=problems)
    return report


def describe(report: dict[str, Any]) -> str:
    """One line of figures: agreement, cosine mean and min, largest probability difference, on how many images."""
    extras = "".join(f", {name} agreement {v['agreement']:.2%}" for name, v in report.get("outputs", {}).items())
    return (f"cluster agreement {report['cluster_agreement']:.2%} ({report['cluster_mismatches']} of "
            f"{report['num_images']} images differ), embedding cosine mean {report['embedding_cosine_mean']:.4f} "
            f"min {report['embedding_cosine_min']:.4f}, largest probability difference "
            f"{report['probability_max_abs_diff']:.4f}{extras}")


def check(report: dict[str, Any], what: str) -> None:
    """AgreementTooLow with the figures unless the report passed."""
    if not report["passed"]:
        limits = report["thresholds"]
        raise AgreementTooLow(f"{what} is too far from the fp32 graph: {'; '.join(report['problems'])} "
                              f"({describe(report)}; thresholds: agreement >= {limits['min_agreement']:.2%}, "
                              f"mean cosine >= {limits['min_cosine']:.4f})")


def write_sample(path: Path, images: np.ndarray, sources: np.ndarray, reference: dict[str, np.ndarray],
                 thresholds: Thresholds) -> None:
    """agreement_sample.npz: the judged images, the fp32 graph's outputs on them and the thresholds to meet."""
    np.savez_compressed(path, images=images, sources=sources, **{f"reference_{k}": v for k, v in reference.items()},
                        **{f"threshold_{k}": np.float64(v) for k, v in asdict(thresholds).items()})


def read_sample(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], Thresholds]:
    """An agreement_sample.npz -> (images uint8 (n, C, S, S), the fp32 outputs by name, the thresholds)."""
    with np.load(path, allow_pickle=False) as data:
        reference = {k.removeprefix("reference_"): data[k] for k in data.files if k.startswith("reference_")}
        limits = {k.removeprefix("threshold_"): float(data[k]) for k in data.files if k.startswith("threshold_")}
        return data["images"], reference, Thresholds.from_json(limits)
