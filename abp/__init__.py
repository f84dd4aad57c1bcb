"""Alternating back-propagation (ABP) for generator networks, in plain PyTorch.

Han, Lu, Zhu, Wu, "Alternating Back-Propagation for Generator Network", AAAI 2017.

    model        X = g(Z; W) + ε,  Z ~ N(0, I),  ε ~ N(0, σ²I)
    energy       E(z, W) = ||y − A(g(z; W))||² / (2σ²) + ||z||² / 2       (abp.energy)
    inference    z ← z − (s²/2)·∂E/∂z + s·U                             (abp.langevin)
    learning     one optimizer step on W for the same E                  (abp.train)

This package imports only torch and numpy; the pipeline (Prefect, MLflow, DVC) lives in
`flows/`.
"""

from abp.divergence import DivergenceError
from abp.energy import energy
from abp.langevin import infer, reconstruct
from abp.models import (
    AudioGenerator,
    Generator,
    ImageGenerator,
    LinearGenerator,
    TextureGenerator,
    VideoGenerator,
    build_generator,
    face_generator,
)
from abp.observe import (
    Identity,
    LocalAverage,
    Mask,
    Observation,
    Projection,
    SeededProjections,
)
from abp.train import ABPConfig, ABPTrainer, Checkpointer, ExecutionConfig, LatentBank
from abp.vae import VAE, VAEConfig, train_vae

__all__ = [
    "VAE",
    "ABPConfig",
    "ABPTrainer",
    "AudioGenerator",
    "Checkpointer",
    "DivergenceError",
    "ExecutionConfig",
    "Generator",
    "Identity",
    "ImageGenerator",
    "LatentBank",
    "LinearGenerator",
    "LocalAverage",
    "Mask",
    "Observation",
    "Projection",
    "SeededProjections",
    "TextureGenerator",
    "VAEConfig",
    "VideoGenerator",
    "build_generator",
    "energy",
    "face_generator",
    "infer",
    "reconstruct",
    "train_vae",
]
