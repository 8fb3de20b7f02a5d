"""Episodic data: task families, datasets and the datamodule that turns them into meta-batches."""

from lightning_meta.data.cifar import CIFARFS, FC100
from lightning_meta.data.cub import CUB
from lightning_meta.data.datamodule import EpisodicDataModule
from lightning_meta.data.domain_accuracy import DomainAccuracy
from lightning_meta.data.learn2learn import Learn2LearnTasks
from lightning_meta.data.miniimagenet import MiniImageNet
from lightning_meta.data.multidomain import MultiDomainTasks, VariableEpisodes
from lightning_meta.data.omniglot import Omniglot
from lightning_meta.data.sampler import EpisodeDataset, EpisodeLoader, EpisodeSampler, episode_generator, episode_seed
from lightning_meta.data.sinusoid import Sinusoid
from lightning_meta.data.tasks import LabelledTasks, TaskFamily
from lightning_meta.data.tieredimagenet import TieredImageNet

__all__ = [
    "CIFARFS",
    "CUB",
    "DomainAccuracy",
    "FC100",
    "EpisodeDataset",
    "EpisodeLoader",
    "EpisodeSampler",
    "EpisodicDataModule",
    "LabelledTasks",
    "Learn2LearnTasks",
    "MiniImageNet",
    "MultiDomainTasks",
    "Omniglot",
    "Sinusoid",
    "TaskFamily",
    "TieredImageNet",
    "VariableEpisodes",
    "episode_generator",
    "episode_seed",
]
