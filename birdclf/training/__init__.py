"""Training (the `train` extra): the fastai Learner over a timm body, data loaders, the cached-feature head,
export to verified ONNX, the starter model, evaluation, label cleaning, run folders and notebook helpers."""
