"""Curating animated assets (paper §4, App. B; docs/design.md §6).

1. Motion statistics (:mod:`~puppet_master.data.motion`) → a scikit-learn random-forest
   classifier fit on a hand-labelled subset (Objaverse-Animation). Models are stored as
   their *training data* (features + labels + settings, JSON) and refit on load with a
   fixed seed — deterministic, and no pickle is ever loaded. The package ships a default
   fit on labelled procedural assets (``assets/curation/default.json``).
2. Optionally, a vision-language model shown 4 frames (the quarters of the animation,
   front view) answers whether the motion is realistic part-level motion
   (Objaverse-Animation-HQ). Pluggable, off by default; any OpenAI-compatible
   ``/chat/completions`` endpoint.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import UserInputError, optional_imports
from ..values import parse_json
from .motion import FEATURE_NAMES, is_static, motion_features

with optional_imports("data"):
    from sklearn.ensemble import RandomForestClassifier

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "curation" / "default.json"

VLM_PROMPT = (
    "You are shown four frames, in order, from a short animation of a 3D object (the start, the "
    "first quarter, the middle and the last quarter, seen from the front). We want animations in "
    "which parts of an object move the way they would in the real world, for example a drawer "
    "sliding out, a door or lid swinging open, a handle turning, or an animal moving its legs or tail. "
    "We do not want animations where nothing moves, where the whole object only moves, turns or "
    "scales as one piece, where parts fly apart or deform in physically implausible ways, or where "
    "the object is unrecognisable. Does this animation show realistic part-level motion? "
    "Answer with a single word: Yes or No."
)


@dataclass
class Decision:
    """Curation outcome of one asset."""

    keep: bool
    reason: str
    probability: float | None = None
    features: list[float] | None = None


class MotionClassifier:
    """Random forest on motion statistics; ``keep`` when P(part-level) ≥ ``threshold``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, threshold: float = 0.5, n_estimators: int = 200,
                 seed: int = 0, ids: list[str] | None = None) -> None:
        features, labels = np.asarray(features, float), np.asarray(labels, int)
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise UserInputError(f"curation features must be (N, {len(FEATURE_NAMES)}), got {features.shape}")
        if len(set(labels.tolist())) < 2:
            raise UserInputError("curation labels need both classes (1 = keep, 0 = reject)")
        self.features, self.labels, self.ids = features, labels, ids or []
        self.threshold, self.n_estimators, self.seed = threshold, n_estimators, seed
        self.forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, class_weight="balanced")
        self.forest.fit(features, labels)

    def probability(self, features: np.ndarray) -> np.ndarray:
        return self.forest.predict_proba(np.atleast_2d(features))[:, list(self.forest.classes_).index(1)]

    def save(self, path: str | Path) -> None:
        data = {"feature_names": FEATURE_NAMES, "threshold": self.threshold, "n_estimators": self.n_estimators,
                "seed": self.seed, "ids": self.ids, "features": self.features.tolist(), "labels": self.labels.tolist()}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "MotionClassifier":
        """Load (refit) a model file; ``None`` = the shipped default.

        Raises:
            UserInputError: missing file or a file for other features.
        """
        path = Path(path) if path is not None else DEFAULT_MODEL
        if not path.is_file():
            raise UserInputError(f"curation model {str(path)!r} does not exist")
        data = parse_json(path.read_bytes(), f"curation model {str(path)!r}")
        if not isinstance(data, dict) or data.get("feature_names") != FEATURE_NAMES:
            raise UserInputError(f"curation model {str(path)!r} was made for other motion features")
        return cls(np.array(data["features"]), np.array(data["labels"]), data["threshold"], data["n_estimators"],
                   data["seed"], data.get("ids"))


def read_labels(path: str | Path) -> dict[str, int]:
    """Labels file: CSV lines ``asset_id,label`` (1 keep / 0 reject; ``#`` comments) or a JSON object.

    Raises:
        UserInputError: unreadable file or labels other than 0/1.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"labels file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        data = parse_json(text, f"labels file {str(path)!r}")
        if not isinstance(data, dict) or not all(v in (0, 1) and not isinstance(v, float) for v in data.values()):
            raise UserInputError(f"labels file {str(path)!r} must be a JSON object of asset_id: 0 or 1")
        labels = {str(k): int(v) for k, v in data.items()}
    else:
        labels = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line or line.lower().startswith("asset"):
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or parts[1] not in ("0", "1"):
                raise UserInputError(f"{path}:{n}: expected 'asset_id,0|1', got {line!r}")
            labels[parts[0]] = int(parts[1])
    if any(v not in (0, 1) for v in labels.values()):
        raise UserInputError(f"labels in {path} must be 0 or 1")
    return labels


def curate(positions: list[np.ndarray], classifier: MotionClassifier,
           windows: list[tuple[int, int]] | None = None) -> Decision:
    """Motion-based decision for one asset's tracks (static assets are rejected outright).

    Args:
        positions: per-part vertex tracks ``[(F, V_p, 3), ...]`` (normalised units).
        windows: ``[(first frame, length), ...]`` of separate motion episodes (an
            episodic procedural asset): each is judged on its own and the asset's
            probability is their mean; ``None`` = the whole animation is one motion.
            ``features`` then holds the first episode's.
    """
    spans = windows or [(0, len(positions[0]) if positions else 0)]
    clips = [[p[s : s + n] for p in positions] for s, n in spans]
    feats = motion_features(clips[0])
    if all(is_static(c) for c in clips):
        return Decision(False, "static: nothing moves", 0.0, feats.tolist())
    p = float(np.mean(classifier.probability(np.stack([motion_features(c) for c in clips]))))
    if p < classifier.threshold:
        return Decision(False, f"motion classifier: not part-level motion (p={p:.2f})", p, feats.tolist())
    return Decision(True, f"motion classifier: part-level motion (p={p:.2f})", p, feats.tolist())


class VLMFilter:
    """Asks an OpenAI-compatible vision-language endpoint the App. B question about 4 frames.

    Args:
        url: base URL, e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        model: model name sent to the endpoint.
        api_key_env: environment variable holding the API key (optional).
    """

    def __init__(self, url: str, model: str = "gpt-4o", api_key_env: str = "OPENAI_API_KEY", timeout: float = 60) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, os.environ.get(api_key_env), timeout

    @staticmethod
    def quarter_frames(frames: list) -> list:
        """Frames 0, N/4, N/2, 3N/4 of a clip."""
        n = len(frames)
        return [frames[min(n - 1, (k * n) // 4)] for k in range(4)]

    def request_body(self, images: list) -> dict:
        """The chat request: the App. B question and 4 PNG images as data URLs."""
        content = [{"type": "text", "text": VLM_PROMPT}]
        for img in images:
            buf = io.BytesIO()
            PIL.Image.fromarray(np.asarray(img)).save(buf, format="PNG")
            content.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}})
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0}

    @staticmethod
    def parse_answer(text: str) -> bool | None:
        """``True`` for Yes, ``False`` for No, ``None`` when the answer is neither."""
        words = "".join(c if c.isalpha() else " " for c in text.lower()).split()
        for w in words:
            if w in ("yes", "no"):
                return w == "yes"
        return None

    def __call__(self, frames: list) -> Decision:
        body = json.dumps(self.request_body(self.quarter_frames(frames))).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, body, headers), timeout=self.timeout) as resp:
                reply = json.loads(resp.read())
            text = reply["choices"][0]["message"]["content"]
        except Exception as exc:  # noqa: BLE001 - the endpoint is external; record and keep going
            return Decision(False, f"vlm: request failed ({type(exc).__name__}: {exc})")
        answer = self.parse_answer(text if isinstance(text, str) else json.dumps(text))
        if answer is None:
            return Decision(False, f"vlm: unparseable answer {text!r:.80}")
        return Decision(answer, "vlm: realistic part-level motion" if answer else "vlm: not realistic part-level motion")
