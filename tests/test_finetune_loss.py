"""The answer-only training loss against torch's and the model's own losses.

Fine-tuning computes the loss over the answer tokens only, a chunk of tokens at a time, with the gradient
worked out by hand so that no chunk's 262k-word logits outlive it. Its loss and its gradient must be what
autograd gets from the whole computation, and divided by the answer tokens, what the model's own
`forward(labels=...)` returns.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stt.stages.finetune import answer_only_loss, output_layer_loss


@pytest.mark.parametrize("cap", [None, 30.0])
def test_chunked_loss_and_gradient_equal_autograd_over_the_whole_batch(cap):
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1000, bias=False).requires_grad_(False)
    head.weight.mul_(20)  # logits in the tens, so the softcap bends them
    hidden = torch.randn(700, 64, dtype=torch.float64).float().requires_grad_(True)
    targets = torch.randint(0, 1000, (700,))

    ours = output_layer_loss(hidden, head, targets, cap, chunk=256)  # 256 + 256 + 188 rows
    ours.backward(torch.tensor(0.5))
    grad_ours = hidden.grad.clone()

    hidden.grad = None
    logits = hidden @ head.weight.T
    if cap:
        logits = torch.tanh(logits / cap) * cap
    reference = F.cross_entropy(logits, targets, reduction="sum")
    reference.backward(torch.tensor(0.5))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grad_ours, hidden.grad, rtol=1e-4, atol=1e-6)


def test_answer_only_loss_is_the_models_own_loss_on_the_answer_tokens():
    from transformers import AutoModelForCausalLM

    from stt.models import hf_folder, resolve_model

    folder = hf_folder(resolve_model("gemma3-270m"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([[2, 9259, 236764, 1217, 659, 611, 236881, 108, 3790, 1175],
                        [2, 818, 5279, 529, 7001, 563, 9079, 236761, 0, 0]])
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt: no loss
    labels[1, 8:] = -100  # padding
    mask = (labels != -100) | (torch.arange(10) < 5)
    inputs = {"input_ids": ids, "attention_mask": mask.long(), "labels": labels}
    with torch.no_grad():
        total, count = answer_only_loss(model, inputs)
        own = model(**inputs).loss  # the model's mean over its shifted labels
    assert count.item() == 5 + 3  # labelled tokens: positions 5-9 of row 0, 5-7 of row 1
    assert (total / count).item() == pytest.approx(own.item(), rel=1e-4)


@pytest.mark.parametrize("on", [True, False])
def test_checkpointing_reaches_the_trainer_without_a_deprecation_warning(on, tmp_path):
    """transformers 5 renamed the argument; the old name still works but warns on every adapter."""
    import warnings

    from transformers import TrainingArguments

    from stt.stages.finetune import _checkpointing_argument

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                 **_checkpointing_argument(TrainingArguments, on))
    assert bool(args.gradient_checkpointing) is on
    if on:  # the reentrant variant would need inputs that require grads
        kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
        assert kwargs == {"use_reentrant": False}
