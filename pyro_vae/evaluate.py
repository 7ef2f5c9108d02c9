"""Evaluation: test ELBO per datum (and, from the model, what else it can report)."""
import torch


@torch.no_grad()
def test_metrics(model, split, cfg) -> dict:
    """Final metrics on ``split``: ``test_loss`` = -ELBO per datum in nats, plus model extras."""
    model.eval()
    metrics = {"test_" + k: v for k, v in model.validation_metrics(split, cfg.train.eval_batch_size).items()}
    return metrics
