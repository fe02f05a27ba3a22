"""Speculative KD (Xu et al. 2024, arXiv 2410.11325): student proposals, teacher corrections, per token.

At every position the student samples a proposal from its own distribution; the teacher, run on
the same prefix, keeps it when it is among the teacher's top-``K`` tokens and otherwise replaces
it with a draw from the teacher's distribution. The sequence is therefore interleaved at the
token level: mostly the student's own tokens (on-policy) while they are plausible, the teacher's
where the student strays, so training never follows a student error far.

Both models decode in step with their own KV caches (one forward per token each, on the accepted
token). Prompts come left-padded; position ids follow the attention mask, as in ``generate``.
"""

from __future__ import annotations

import inspect

import torch

from distill.onpolicy.generation import Generated, Sampling, StopIds, completion_mask, eval_mode, sample_next, stop_list


def _new_cache(model: torch.nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=getattr(model, "config", None))


def _step(model: torch.nn.Module, cache, **inputs):
    """One forward that extends ``cache`` in place (transformers >= 5 names it ``cache``, older
    versions ``past_key_values``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return model(**inputs, **{key: cache}, use_cache=True, logits_to_keep=1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def speculative_generate(student: torch.nn.Module, teacher: torch.nn.Module, prompt_ids: torch.Tensor,
                         prompt_mask: torch.Tensor, sampling: Sampling, top_k: int, stop_ids: StopIds,
                         pad_id: int, vocab_size: int | None = None,
                         generator: torch.Generator | None = None) -> Generated:
    """Token-level interleaved continuations (see the module docstring).

    Args:
        student, teacher: causal LMs over one vocabulary.
        prompt_ids, prompt_mask: ``(B, P)`` left-padded prompts.
        sampling: proposal and replacement sampling (temperature, top_p, max_new_tokens).
        top_k: a proposal outside the teacher's top-``top_k`` tokens is replaced.
        stop_ids: a row ends at the first of these it emits (the end-of-turn token of a chat model).
        vocab_size: compare over the first ``vocab_size`` ids (the shared tokenizer's).
        generator: the random stream of every draw.

    Returns:
        :class:`Generated` with ``from_teacher`` set where the teacher's draw replaced a proposal.
    """
    if top_k < 1:
        raise ValueError(f"sequences.top_k must be >= 1, got {top_k}")
    b = prompt_ids.shape[0]
    device = prompt_ids.device
    stops = torch.tensor(stop_list(stop_ids), dtype=prompt_ids.dtype, device=device)
    mask = prompt_mask.clone()
    pos = _positions(mask)
    tokens, from_teacher = [], []
    done = torch.zeros(b, dtype=torch.bool, device=device)
    with eval_mode(student, teacher):
        s_cache, t_cache = _new_cache(student), _new_cache(teacher)
        # logits_to_keep=1: only the last position's distribution is sampled from
        s = _step(student, s_cache, input_ids=prompt_ids, attention_mask=mask, position_ids=pos)
        t = _step(teacher, t_cache, input_ids=prompt_ids, attention_mask=mask, position_ids=pos)
        s_logits, t_logits = s.logits[:, -1, :vocab_size], t.logits[:, -1, :vocab_size]
        next_pos = pos[:, -1] + 1
        for _ in range(sampling.max_new_tokens):
            proposal = sample_next(s_logits, sampling, generator)
            top = t_logits.topk(min(top_k, t_logits.shape[-1]), dim=-1).indices
            accepted = (top == proposal.unsqueeze(-1)).any(-1)
            # a draw from the teacher for every row keeps the random stream independent of which
            # rows were accepted; only the rejected rows use theirs
            replacement = sample_next(t_logits, sampling, generator)
            token = torch.where(accepted, proposal, replacement)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            tokens.append(token)
            from_teacher.append(~accepted & ~done)
            if stops.numel():
                done = done | torch.isin(token, stops)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
            step = token.unsqueeze(-1)
            s = _step(student, s_cache, input_ids=step, attention_mask=mask, position_ids=next_pos.unsqueeze(-1))
            t = _step(teacher, t_cache, input_ids=step, attention_mask=mask, position_ids=next_pos.unsqueeze(-1))
            s_logits, t_logits = s.logits[:, -1, :vocab_size], t.logits[:, -1, :vocab_size]
            next_pos = next_pos + 1
    completion = torch.stack(tokens, dim=1)
    from_teacher_t = torch.stack(from_teacher, dim=1)
    cmask = completion_mask(completion, stops.tolist())
    return Generated(completion=completion.masked_fill(cmask == 0, pad_id), completion_mask=cmask,
                     from_teacher=from_teacher_t & (cmask == 1))
