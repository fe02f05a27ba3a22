"""distill: knowledge distillation of large language models with Lightning and Hydra."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# Integer division for configs (e.g. switch a term off at half the run: ${div:${trainer.max_steps},2}).
if not OmegaConf.has_resolver("div"):
    OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b))

# Sweep run directories are named by the keys the sweep varies (distill.run_names).
if not OmegaConf.has_resolver("distill.run_name"):
    def _run_name(*, _root_):
        from distill.run_names import hydra_run_name

        return hydra_run_name(_root_)

    OmegaConf.register_new_resolver("distill.run_name", _run_name)
