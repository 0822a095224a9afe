"""Cut Cross Entropy: the patched loss and its gradients equal transformers' own; unsupported families are refused."""

from __future__ import annotations

import copy

import pytest

from gym import testing
from gym.api import ConfigError, ModelError

DATA = [{"path": "builtin:addition?rows=64", "type": "alpaca"}]


@pytest.fixture(scope="module")
def tiny():
    from gym.tiny import build_model, build_tokenizer

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model(build_tokenizer(), hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)
    return model.float()


def batch(vocab: int):
    import torch

    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (2, 24), generator=generator)
    labels = input_ids.clone()
    labels[0, :7] = -100  # a prompt
    labels[1, 18:] = -100  # padding
    return input_ids, labels


@pytest.mark.slow
@pytest.mark.parametrize("num_items", [None, 31])
def test_loss_and_gradients_equal_the_standard_loss(tiny, num_items):
    import torch

    from gym.plugins.cce import patch_model

    standard, cut = tiny, copy.deepcopy(tiny)
    assert patch_model(cut) == "llama"
    input_ids, labels = batch(standard.config.vocab_size)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    expected = standard(input_ids=input_ids, labels=labels, use_cache=False, **extra)
    got = cut(input_ids=input_ids, labels=labels, use_cache=False, **extra)
    assert got.logits is None and expected.logits is not None  # the patched loss never made the logits
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    grads = dict(cut.named_parameters())
    for name, param in standard.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)
    standard.zero_grad()
    # without labels the model still gives logits (generation, evaluation)
    assert cut(input_ids=input_ids[:, :5], use_cache=False).logits.shape == (2, 5, cut.config.vocab_size)


def test_a_family_it_cannot_patch_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gym.plugins.cce import patch_model

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(ModelError, match=r"cut_cross_entropy: the model family 'gpt2' is not supported"):
        patch_model(model)


def test_a_local_model_of_another_family_is_refused_at_validate(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": str(tmp_path), "datasets": DATA, "cut_cross_entropy": True})
    assert "cut_cross_entropy" in error.value.problems[0] and "'gpt2' is not supported" in error.value.problems[0]


def test_router_aux_loss_is_refused(tiny):
    from gym.plugins.cce import patch_model

    model = copy.deepcopy(tiny)
    model.config.output_router_logits = True
    with pytest.raises(ModelError, match="auxiliary loss"):
        patch_model(model)


@pytest.mark.slow
def test_a_run_trains_with_it(tmp_path, capsys):
    result = testing.run_config({"datasets": DATA, "cut_cross_entropy": True}, steps=3, tmp_path=tmp_path)
    assert "loss is computed by Cut Cross Entropy (torch_compile implementation)" in capsys.readouterr().out
    assert result.steps == 3 and result.final_loss < result.first_loss


def test_axolotls_plugin_entry_turns_it_on_unless_the_key_says_no():
    from gym.plugins.cce import AXOLOTL_PLUGIN, enabled

    assert not enabled(testing.validate({"base_model": "m", "datasets": DATA}))
    assert enabled(testing.validate({"base_model": "m", "datasets": DATA, "plugins": [AXOLOTL_PLUGIN]}))
    assert not enabled(testing.validate({"base_model": "m", "datasets": DATA, "plugins": [AXOLOTL_PLUGIN],
                                         "cut_cross_entropy": False}))
    # and so it meets Liger's fused loss as cut_cross_entropy: true would
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "datasets": DATA, "plugins": [AXOLOTL_PLUGIN],
                          "liger_fused_linear_cross_entropy": True})
    assert "cut_cross_entropy both replace the loss" in error.value.problems[0]
