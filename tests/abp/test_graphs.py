"""The cuda_graphs switch: on a machine without CUDA it says so and trains exactly like the
plain path; the graph wrapper refuses what it cannot capture. (Replaying the captured loop
needs a GPU: `python -m bench.cuda_checks` compares it with the eager loop there.)"""

import pytest
import torch

from abp.graphs import CUDAGraphed
from abp.models import ImageGenerator
from abp.observe import Mask
from abp.train import ABPConfig, ABPTrainer, ExecutionConfig


def trainer(data: torch.Tensor, observation: Mask, **switches) -> ABPTrainer:
    torch.manual_seed(0)
    generator = ImageGenerator(latent_dim=4, image_size=8, channels=1, widths=(8,))
    config = ABPConfig(sigma=0.3, step_size=0.1, langevin_steps=3, batch_size=6, seed=2)
    return ABPTrainer(
        generator,
        data,
        config,
        execution=ExecutionConfig(**switches),
        observation=observation,
        device="cpu",
    )


def test_cuda_graphs_without_cuda_warn_and_train_like_the_plain_path():
    data = torch.rand(15, 1, 8, 8) * 2 - 1  # 15 = 6 + 6 + 3: two batch sizes per epoch
    mask = Mask((torch.rand(15, 1, 8, 8) > 0.5).float())
    plain = trainer(data, mask)
    with pytest.warns(UserWarning, match="cuda_graphs is on but training runs on cpu"):
        graphed = trainer(data, mask, cuda_graphs=True)
    plain.fit(3)
    graphed.fit(3)
    for a, b in zip(plain.generator.parameters(), graphed.generator.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(plain.latent_bank.latents, graphed.latent_bank.latents)


def test_the_graph_wrapper_needs_a_cuda_generator():
    with pytest.raises(ValueError, match="need a CUDA generator"):
        CUDAGraphed(lambda ids, rng: ids, torch.Generator())


def test_a_batch_of_masks_is_chosen_without_checking_it_again():
    # The check reads the mask on the host, which a CUDA graph cannot capture; rows of a
    # checked mask are taken on trust. To see whether `select` checks again, the checked
    # mask is given values the check rejects afterwards: a second check would raise.
    mask = Mask(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(
        mask.select(torch.tensor([2, 0])).mask, torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    )
    mask.mask[1, 0] = 0.5  # what the check would reject, written past it
    chosen = mask.select(torch.tensor([1, 2]))
    assert torch.equal(chosen.mask, torch.tensor([[0.5, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="only 0 \\(hidden\\) and 1"):
        Mask(torch.tensor([0.5, 1.0]))  # a mask built from outside is still checked
