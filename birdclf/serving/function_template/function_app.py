"""Azure Functions (Python v2) entry point: birdclf's prediction API (FastAPI) as an AsgiFunctionApp.

/api/predict, /api/labels and /api/model need the function key; /api/health, /api/docs and /api/openapi.json are
anonymous. The model: $BIRDCLF_MODEL (a path or URL), else model.onnx beside this file, else the starter model.
"""

from pathlib import Path

from birdclf.serving.azure import create_function_app

app = create_function_app(Path(__file__).parent)
