"""The job queue: submit work, claim it, run it by kind, and serve it with a worker.

SQLite is the queue: a job is a row, claimed by one live worker at a time (a dead worker's jobs
are taken over), and every finished image is a row of its own, so nothing survives only in memory.
"""
from .runner import GenerateRunner, Progress, StopSignal, Stopped, remove_orphans, run_claimed
from .submit import (MAX_N, JobRequest, PromptRequest, RegenerateRequest, Submitted, UpscaleRequest, check_job,
                     prompt_recipe, queue_upscale, random_seed, record_job, regenerate, submit)
from .upscale_runner import UpscaleRunner
from .worker import Worker

__all__ = ["GenerateRunner", "Progress", "StopSignal", "Stopped", "remove_orphans", "run_claimed", "MAX_N",
           "JobRequest", "PromptRequest", "prompt_recipe", "RegenerateRequest", "Submitted", "UpscaleRequest", "check_job", "queue_upscale",
           "random_seed", "record_job", "regenerate", "submit", "UpscaleRunner", "Worker"]
