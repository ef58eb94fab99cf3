"""The plain hand-written FastAPI endpoints that ``benchmarks/serve.py`` compares against:
what users write around a model today, calling it once per request.

- ``app``: the usual tutorial endpoint (``async def``, ``await file.read()``, PIL, the
  model), which runs one image at a time;
- ``app_threaded``: the careful variant, a plain ``def`` that FastAPI runs in its thread
  pool, so requests overlap.

Run: ``TLEARN_MODEL=imagenet:tf_efficientnet_lite0 uvicorn serve_baseline:app --app-dir benchmarks``
"""

from __future__ import annotations

import io
import os

from fastapi import FastAPI, File, UploadFile
from PIL import Image

import tlearn

predictor = tlearn.load_predictor(os.environ.get("TLEARN_MODEL", "imagenet:tf_efficientnet_lite0"))
app = FastAPI()
app_threaded = FastAPI()


@app.post("/v1/predict")
async def predict(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008
    image = Image.open(io.BytesIO(await file.read())).convert("RGB")
    result = predictor.predict_images([image], top_k=5)[0]
    return {"label": result["label"], "probability": result["probability"]}


@app_threaded.post("/v1/predict")
def predict_threaded(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008
    image = Image.open(file.file).convert("RGB")
    result = predictor.predict_images([image], top_k=5)[0]
    return {"label": result["label"], "probability": result["probability"]}
