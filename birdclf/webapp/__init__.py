"""The web app (the `app` extra): the Voila page (app.ipynb) and its client for the prediction API."""

from pathlib import Path

__all__ = ["NOTEBOOK"]

NOTEBOOK = Path(__file__).resolve().parent / "app.ipynb"  # the page Voila serves; the repo's app.ipynb is a copy
