"""Tasks, the episodic sampler and collation: config -> tasks -> sampler -> episode -> batches."""

from .collate import CollateConfig, collate, encode, tensorize
from .download import PACKAGES, data_dir, download, metalm_home, require
from .episode import Episode, Example, TextEpisode
from .episodes import EpisodeSampler, SamplerConfig, split_sampler
from .registry import Split, Task, TaskRegistry, default_registry, load_split, packaged_tasks_dir, task_path
from .synthetic import SyntheticTasks
from .tasks import SourceSpec, TaskSpec, load_task_file, parse_task

__all__ = [
    "PACKAGES", "CollateConfig", "Episode", "EpisodeSampler", "Example", "SamplerConfig", "SourceSpec", "Split",
    "SyntheticTasks", "Task", "TaskRegistry", "TaskSpec", "TextEpisode", "collate", "data_dir", "default_registry",
    "download", "encode", "load_split", "load_task_file", "metalm_home", "packaged_tasks_dir", "parse_task",
    "require", "split_sampler", "task_path", "tensorize",
]
