"""The data plane: model repository and model, admission, the batcher."""
