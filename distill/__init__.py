"""distill: knowledge distillation of large language models with Lightning and Hydra."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# Integer division for configs (e.g. switch a term off at half the run: ${div:${trainer.max_steps},2}).
if not OmegaConf.has_resolver("div"):
    OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b))
