"""Getting, checking and splitting bird image data sets (Kaggle BIRDS 525 layout or any folder per class)."""
