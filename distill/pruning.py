"""Cutting a smaller model out of a pretrained one: drop decoder layers, drop MLP channels.

Pure functions over a Hugging Face causal LM; :class:`distill.pruned.PrunedSpec` runs them at
start-up on the run's own data and caches the result as an ordinary folder.

* **Depth** (which decoder layers stay): an explicit ``keep`` list; ``uniform`` (every k-th
  layer, or ``num_layers`` evenly spaced with the first and last kept); or ``block_influence``
  (ShortGPT, Men et al. 2024): a layer whose output is nearly its input does little, so with
  ``x_i`` the hidden states entering layer ``i``

      BI_i = 1 - E_tokens[ cos(x_i, x_{i+1}) ]

  on a calibration batch, and the ``num_layers`` layers of highest BI are kept.
* **Width** (Minitron, Muralidharan et al. 2024): each MLP keeps the ``intermediate_size``
  channels of largest mean absolute activation ``E_tokens |act(gate(x)) * up(x)|`` on the same
  batch; ``gate``/``up`` lose the rows and ``down`` the columns of the dropped channels, so the
  pruned MLP computes exactly the teacher's MLP with those channels zeroed.

The pruned model is built with ``from_config`` from the teacher's config (fewer layers, narrower
MLP), so every attention module gets its new ``layer_idx`` and per-layer lists (``layer_types``:
Gemma's sliding/full pattern) follow the kept layers.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
from transformers import AutoModelForCausalLM

from distill.config import ConfigError

DepthMethod = Literal["all", "keep", "uniform", "block_influence"]


@dataclass
class PruneSpec:
    """What to cut. Keys as under ``student.depth`` / ``student.width`` of ``conf/student/pruned.yaml``.

    Args:
        method: "all" (no depth pruning), "keep", "uniform" or "block_influence".
        keep: the teacher's layer indices to keep (method "keep").
        every: keep layers 0, k, 2k, ... (method "uniform").
        num_layers: how many layers to keep ("uniform": evenly spaced; "block_influence": the most important).
        intermediate_size: MLP channels each layer keeps; None keeps them all.
    """

    method: DepthMethod = "all"
    keep: list[int] | None = None
    every: int | None = None
    num_layers: int | None = None
    intermediate_size: int | None = None

    def __post_init__(self):
        if self.method not in get_args(DepthMethod):
            raise ConfigError(f"student.depth.method={self.method!r}: use one of {list(get_args(DepthMethod))}")
        if self.method == "keep" and not self.keep:
            raise ConfigError("student.depth.keep keeps no layer: list the teacher's layer indices to keep "
                              "(e.g. student.depth.keep=[0,4,8,12,16,20,24,29])")
        if self.method == "uniform" and (self.every is None) == (self.num_layers is None):
            raise ConfigError("student.depth.method=uniform: set exactly one of student.depth.every (keep every "
                              "k-th layer) and student.depth.num_layers (that many, evenly spaced)")
        if self.method == "block_influence" and self.num_layers is None:
            raise ConfigError("student.depth.method=block_influence: set student.depth.num_layers (how many of the "
                              "teacher's layers to keep)")
        for key in ("every", "num_layers", "intermediate_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                where = "width" if key == "intermediate_size" else "depth"
                raise ConfigError(f"student.{where}.{key}={value} keeps nothing; it must be >= 1")
        if self.keep is not None:
            self.keep = [int(i) for i in self.keep]

    @property
    def needs_calibration(self) -> bool:
        """True when the choice depends on activations (a calibration batch of the run's data)."""
        return self.method == "block_influence" or self.intermediate_size is not None

    def kept_layers(self, num_teacher_layers: int, influence: list[float] | None = None) -> list[int]:
        """The teacher's layer indices the student keeps, ascending."""
        n = num_teacher_layers
        if self.method == "all":
            return list(range(n))
        if self.method == "keep":
            bad = sorted({i for i in self.keep if not 0 <= i < n})
            if bad:
                raise ConfigError(f"student.depth.keep names layer(s) {bad}, but the teacher has {n} layers "
                                  f"(indices 0..{n - 1}); fix the list")
            return sorted(set(self.keep))
        if self.num_layers is not None and self.num_layers > n:
            raise ConfigError(f"student.depth.num_layers={self.num_layers}, but the teacher has only {n} layers")
        if self.method == "uniform":
            if self.every is not None:
                return list(range(0, n, self.every))
            if self.num_layers == 1:
                return [0]
            return sorted({round(i * (n - 1) / (self.num_layers - 1)) for i in range(self.num_layers)})
        if influence is None or len(influence) != n:
            raise ValueError("block_influence needs one importance score per teacher layer")
        ranked = sorted(range(n), key=lambda i: -influence[i])
        return sorted(ranked[: self.num_layers])

    def check_width(self, teacher_intermediate: int) -> None:
        if self.intermediate_size is not None and self.intermediate_size > teacher_intermediate:
            raise ConfigError(f"student.width.intermediate_size={self.intermediate_size} is wider than the teacher's "
                              f"MLP ({teacher_intermediate}); use a smaller value, or null to keep every channel")


# ---------------------------------------------------------------------------- model anatomy
def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The qualified name and the ``ModuleList`` of a causal LM's decoder layers."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"student=pruned: {type(model).__name__} keeps no `layers` list in its decoder; pruning "
                          "supports Llama-style models (Llama, Qwen2/3, Mistral, Gemma 2/3, ...)")
    for name, module in model.named_modules():
        if module is layers:
            return name, layers
    raise AssertionError("decoder layers not found among the model's modules")


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _mlp_projections(layer) -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear]:
    mlp = getattr(layer, "mlp", None)
    parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, torch.nn.Linear) for p in parts):
        raise ConfigError("student.width.intermediate_size: width pruning needs gated MLPs with gate_proj, up_proj "
                          "and down_proj (Llama, Qwen, Mistral, Gemma); set it to null for this model")
    return tuple(parts)


# ---------------------------------------------------------------------------- importance
@torch.no_grad()
def calibrate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              width: bool = True) -> tuple[list[float], list[torch.Tensor] | None]:
    """Block influence of every decoder layer and, with ``width``, MLP channel importances.

    Args:
        model: the teacher (any mode; it runs in eval mode here and is restored after).
        input_ids: (B, L) calibration tokens.
        attention_mask: (B, L), 1 for real tokens; padding is left out of every average.
        width: also return each layer's (intermediate_size,) mean ``|act(gate(x)) * up(x)|``.

    Returns:
        ``(influence, channels)``: ``influence[i] = 1 - mean cos(x_i, x_{i+1})`` over real tokens;
        ``channels[i]`` the per-channel mean absolute activation of layer ``i``'s MLP (or None).
    """
    _, layers = decoder_layers(model)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    real = mask.bool()
    n_tokens = real.sum().clamp_min(1)
    influence: list[float] = [0.0] * len(layers)
    channels: list[torch.Tensor | None] = [None] * len(layers)
    inputs: dict[int, torch.Tensor] = {}
    handles = []

    def take_input(i):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def take_output(i):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs.pop(i).float(), out.float(), dim=-1)  # (B, L)
            influence[i] = float(1.0 - cos[real].mean())
        return hook

    def take_channels(i):
        def hook(module, args):
            act = args[0].float().abs()  # (B, L, I): act(gate(x)) * up(x), the input of down_proj
            channels[i] = (act * real[..., None]).sum(dim=(0, 1)) / n_tokens
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(take_input(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(take_output(i), with_kwargs=True))
        if width:
            handles.append(_mlp_projections(layer)[2].register_forward_pre_hook(take_channels(i)))
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return influence, (channels if width else None)


# ---------------------------------------------------------------------------- the cut
def prune(model: torch.nn.Module, spec: PruneSpec, calibration_ids: torch.Tensor | None = None,
          attention_mask: torch.Tensor | None = None) -> tuple[torch.nn.Module, dict]:
    """A new, smaller model holding the kept part of ``model``'s weights, and what was kept.

    Args:
        model: the teacher (a transformers causal LM; it is not modified).
        spec: what to cut.
        calibration_ids: (B, L) tokens of the run's training data; needed when
            ``spec.needs_calibration``.
        attention_mask: (B, L) mask of ``calibration_ids`` (None: no padding).

    Returns:
        ``(student, record)``: the pruned model (in the teacher's dtype, built with ``from_config``
        so it saves and reloads as an ordinary folder) and a JSON-able record of the kept layers,
        channel counts and importance scores.
    """
    config = _text_config(model)
    n = config.num_hidden_layers
    teacher_width = getattr(config, "intermediate_size", None)
    if spec.intermediate_size is not None:
        spec.check_width(teacher_width)
    influence = channels = None
    if spec.needs_calibration:
        if calibration_ids is None:
            raise ValueError(f"pruning by {spec.method} / MLP width needs calibration_ids (a batch of training data)")
        influence, channels = calibrate(model, calibration_ids, attention_mask, width=spec.intermediate_size is not None)
    kept = spec.kept_layers(n, influence)
    if not kept:
        raise ConfigError("the pruning spec keeps no layer; keep at least one (student.depth)")

    new_config = copy.deepcopy(model.config)
    text = new_config.get_text_config() if hasattr(new_config, "get_text_config") else new_config
    text.num_hidden_layers = len(kept)
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = [text.layer_types[i] for i in kept]
    width = spec.intermediate_size or teacher_width
    if spec.intermediate_size is not None:
        text.intermediate_size = width
    dtype = next(model.parameters()).dtype
    student = AutoModelForCausalLM.from_config(new_config, dtype=dtype)

    prefix, _ = decoder_layers(model)
    kept_channels = None
    if channels is not None:
        kept_channels = {i: torch.topk(channels[i], width).indices.sort().values for i in kept}
    layer_key = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    state = {}
    new_index = {old: new for new, old in enumerate(kept)}
    for key, tensor in model.state_dict().items():
        match = layer_key.match(key)
        if match is None:
            state[key] = tensor
            continue
        old, rest = int(match.group(1)), match.group(2)
        if old not in new_index:
            continue
        if kept_channels is not None:
            tensor = _slice_mlp(rest, tensor, kept_channels[old])
        state[f"{prefix}.{new_index[old]}.{rest}"] = tensor
    student.load_state_dict(state, strict=True)
    student.generation_config = copy.deepcopy(model.generation_config)

    record = {
        "method": spec.method, "spec": asdict(spec),
        "teacher_layers": n, "kept_layers": kept, "dropped_layers": [i for i in range(n) if i not in new_index],
        "block_influence": [round(v, 6) for v in influence] if influence is not None else None,
        "intermediate_size": {"teacher": teacher_width, "student": width},
        # Share of each kept layer's total mean |activation| carried by the channels it keeps.
        "mlp_activation_kept": ({str(i): round(float(channels[i][kept_channels[i]].sum() / channels[i].sum()), 6)
                                 for i in kept} if kept_channels is not None else None),
        "calibration": ({"sequences": int(calibration_ids.shape[0]),
                         "tokens": int((attention_mask if attention_mask is not None
                                        else torch.ones_like(calibration_ids)).sum())}
                        if spec.needs_calibration else None),
        "parameters": {"teacher": sum(p.numel() for p in model.parameters()),
                       "student": sum(p.numel() for p in student.parameters())},
    }
    return student, record


def _slice_mlp(rest: str, tensor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Restrict one MLP parameter to the kept channels (rows of gate/up, columns of down)."""
    if rest.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
        return tensor.index_select(0, idx).clone()
    if rest == "mlp.down_proj.weight":
        return tensor.index_select(1, idx).clone()
    return tensor
