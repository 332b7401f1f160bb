"""BatchNorm AlexNet after a strict reload: eval mode uses the loaded running statistics."""

from pathlib import Path

import torch

from models.alexnet import alexnet


def test_reloaded_batchnorm_model_is_batch_independent_in_eval(tmp_path: Path) -> None:
    model = alexnet(num_classes=3, batch_norm=True)
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    with torch.no_grad():
        for _ in range(3):
            model.train()(x)
    torch.save(model.state_dict(), tmp_path / "alexnet.pt")
    fresh = alexnet(num_classes=3, batch_norm=True)
    fresh.load_state_dict(torch.load(tmp_path / "alexnet.pt", weights_only=True))
    assert torch.equal(fresh.features.bn1.running_mean, model.features.bn1.running_mean)
    fresh.eval()
    with torch.no_grad():
        alone = fresh(x[:1])
        in_batch = fresh(x)[:1]
        torch.testing.assert_close(alone, in_batch)
        torch.testing.assert_close(fresh(x), fresh(x))  # dropout is off
        assert not torch.allclose(fresh.train()(x)[:1], in_batch)  # batch statistics differ
