"""The baseline of ``make bench``: a seed-style Flask app, the way a first version is usually written.

One module-level network in eager fp32, PIL decode, ``Resize(resize) -> CenterCrop(size) -> ToTensor ->
Normalize``, one image per request, ``jsonify`` of the top class; no batching, no OpenVINO, no validation beyond
"is there an image". Served by ``gunicorn -w 1 'tools.naive_app:create_app(224)'``; never deploy it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from flask import Flask, jsonify, request
from PIL import Image
from torchvision import transforms as T

from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.transforms import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]


def naive_transform(size: int) -> T.Compose:
    """The seed-style preprocessing at ``size`` px: ``Resize(size / 0.875) -> CenterCrop -> ToTensor ->
    Normalize`` with ImageNet's mean and std (torchvision's classic eval preset), whatever the checkpoint records."""
    return T.Compose(
        [T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def create_app(size: int = 224) -> Flask:
    """The baseline app for the checkpoint at ``FISH_MODEL_PATH`` (default: the shipped model) at ``size`` px:
    ``POST /api/predict`` with an ``image`` file field answers ``{"label", "confidence"}``."""
    path = os.environ.get("FISH_MODEL_PATH", str(ROOT / "weights" / "fish4knowledge_lite2.pt"))
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).eval()
    names = ckpt.class_names
    transform = naive_transform(size)
    app = Flask(__name__)

    @app.post("/api/predict")
    def predict():  # noqa: ANN202 - the seed style, on purpose
        image = Image.open(io.BytesIO(request.files["image"].read())).convert("RGB")
        with torch.no_grad():
            probs = torch.softmax(model(transform(image).unsqueeze(0)), dim=1)[0]
        confidence, index = probs.max(0)
        return jsonify(label=names[int(index)], confidence=float(confidence))

    @app.get("/healthz")
    def healthz():  # noqa: ANN202
        return jsonify(status="ok")

    return app
