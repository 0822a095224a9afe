"""Learning proof of the preference methods on generated data: a short SFT on careless demonstrations (half the
carrying problems of ``builtin:addition?slips=50`` answered with the carry forgotten) leaves a model that often
forgets the carry; DPO, KTO and ORPO on ``builtin:addition-preferences`` (the right sum against a wrong one), and
GRPO with examples/grpo-addition.yml's reward, each raise its greedy exact match on held-out problems (never in any
training data) and the share of them where it prefers the right sum to the forgotten carry. A reward model trained
from the same model on the same pairs ranks held-out pairs well above chance. Figures: docs/preference.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from gym import testing

SFT = {"base_model": "builtin:tiny-llama", "datasets": [{"path": "builtin:addition?slips=50", "type": "chat_template"}],
       "sequence_len": 64, "micro_batch_size": 64, "learning_rate": 2e-3, "lr_scheduler": "cosine",
       "warmup_steps": 30, "seed": 42, "logging_steps": 100}
SFT_STEPS, STEPS = 550, 100  # the quickstart's SFT
PAIRS = [{"path": "builtin:addition-preferences?rows=4000", "type": "passthrough"}]
SEED = int(os.environ.get("GYM_PROOF_SEED", "0"))  # to measure the spread: GYM_PROOF_SEED=1 pytest ... -s
METHODS = {
    "dpo": {"rl": "dpo", "rl_beta": 0.1, "learning_rate": 5e-5},
    "kto": {"rl": "kto", "rl_beta": 0.1, "learning_rate": 5e-5},
    "orpo": {"rl": "orpo", "orpo_alpha": 5.0, "learning_rate": 1e-5},  # TRL's NLL term covers the prompt too
}
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GRPO = {"rl": "grpo", "learning_rate": 2e-5, "micro_batch_size": 64, "chat_template": "tokenizer_default",
        "trl": {"reward_funcs": ["grpo_addition_rewards.correct_sum"], "num_generations": 8,
                "max_completion_length": 6, "temperature": 0.7, "beta": 0.0},
        "datasets": [{"path": "builtin:addition", "type": "grpo.transform",
                      "transform": "grpo_addition_rewards.addition_prompt"}]}  # examples/grpo-addition.yml


@dataclass
class HeldOut:
    """A model's figures on held-out problems and pairs (none of them in any training data)."""

    exact_match: float  # greedy answers
    chosen: list[float]  # per pair: log p(right sum)
    rejected: list[float]  # per pair: log p(wrong sum)
    over_slip: float  # share of carrying problems where the right sum beats the sum with the carry forgotten

    def reward_accuracy(self, reference: "HeldOut") -> float:
        """DPO's implicit reward accuracy against ``reference``: log-ratio of chosen above that of rejected."""
        wins = [(c - rc) > (r - rr) for c, r, rc, rr in zip(self.chosen, self.rejected, reference.chosen,
                                                            reference.rejected)]
        return sum(wins) / len(wins)


def held_out(model_dir: str, problems: int = 400, pairs: int = 200) -> HeldOut:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gym.plugins.addition import AdditionTask, units_carry
    from gym.plugins.dpo import pair_rows
    from gym.plugins.evaluate import greedy_answers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def prompt(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def logp(text: str, answer: str) -> float:
        start = len(tokenizer(text)["input_ids"])
        ids = torch.tensor([tokenizer(text + answer + "<|im_end|>")["input_ids"]])
        logps = model(ids).logits[0, :-1].log_softmax(-1)
        return logps[torch.arange(start - 1, ids.shape[1] - 1), ids[0, start:]].sum().item()

    rows = AdditionTask().evaluation_rows(problems)
    answers = greedy_answers(model, tokenizer, [tokenizer(prompt(r["messages"][:1]))["input_ids"] for r in rows],
                             max_new_tokens=6)
    exact = sum(answer == row["output"] for answer, row in zip(answers, rows)) / problems
    with torch.no_grad():
        far = list(pair_rows(AdditionTask(), count=pairs, held_out=True, seed=7))
        chosen = [logp(prompt(p["prompt"]), p["chosen"][0]["content"]) for p in far]
        rejected = [logp(prompt(p["prompt"]), p["rejected"][0]["content"]) for p in far]
        carrying = [(a, b, r) for (a, b), r in zip(AdditionTask().evaluation_operands(problems), rows)
                    if units_carry(a, b)]
        slips = [logp(prompt(r["messages"][:1]), r["output"]) > logp(prompt(r["messages"][:1]), str(a + b - 10))
                 for a, b, r in carrying]
    return HeldOut(exact, chosen, rejected, sum(slips) / len(slips))


def reward_model_ranking(model_dir: str, pairs: int = 200) -> float:
    """The share of held-out pairs a reward model scores right above wrong, loaded in plain transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gym.plugins.addition import AdditionTask
    from gym.plugins.dpo import pair_rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    wins = 0
    with torch.no_grad():
        for pair in pair_rows(AdditionTask(), count=pairs, held_out=True, seed=7):
            scores = [model(**tokenizer(tokenizer.apply_chat_template(pair["prompt"] + pair[key], tokenize=False)
                                        + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()
                      for key in ("chosen", "rejected")]
            wins += scores[0] > scores[1]
    return wins / pairs


@pytest.mark.slow
def test_preference_methods_raise_held_out_exact_match(tmp_path, monkeypatch):
    sft = testing.run_config({**SFT, "seed": 42 + SEED}, steps=SFT_STEPS, tmp_path=tmp_path / "sft")
    before = held_out(sft.output_dir)
    report = [f"SFT on careless demonstrations: exact match {before.exact_match:.1%}, "
              f"right over the forgotten carry {before.over_slip:.1%}"]
    after = {}
    for name, keys in METHODS.items():
        run = testing.run_config(
            {"base_model": sft.output_dir, "datasets": PAIRS, "sequence_len": 64, "micro_batch_size": 16,
             "lr_scheduler": "constant", "logging_steps": 20, "seed": SEED, **keys},
            steps=STEPS, tmp_path=tmp_path / name)
        after[name] = held_out(run.output_dir)
        report.append(f"{name}: exact match {after[name].exact_match:.1%}, right over the forgotten carry "
                      f"{after[name].over_slip:.1%}, reward accuracy {after[name].reward_accuracy(before):.1%}")
    monkeypatch.chdir(EXAMPLES)  # where GRPO finds the example's reward module
    grpo = testing.run_config({**GRPO, "base_model": sft.output_dir, "sequence_len": 64, "lr_scheduler": "constant",
                               "logging_steps": 1, "seed": SEED}, steps=STEPS, tmp_path=tmp_path / "grpo")
    after["grpo"] = held_out(grpo.output_dir)
    rewards = [e["reward"] for e in grpo.trainer.state.log_history if "reward" in e]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10  # mean reward of the first and last 10 steps
    report.append(f"grpo: exact match {after['grpo'].exact_match:.1%}, right over the forgotten carry "
                  f"{after['grpo'].over_slip:.1%}, mean reward of the first / last 10 steps {first:.3f} -> {last:.3f}")
    rm = testing.run_config(
        {"base_model": sft.output_dir, "reward_model": True, "datasets": PAIRS, "sequence_len": 64,
         "micro_batch_size": 16, "learning_rate": 3e-4, "lr_scheduler": "constant", "logging_steps": 50,
         "seed": SEED}, steps=300, tmp_path=tmp_path / "rm")
    ranking = reward_model_ranking(rm.output_dir)
    report.append(f"reward model: ranks {ranking:.1%} of held-out pairs right")
    print("\n".join(report))
    for name, figures in after.items():
        assert figures.exact_match >= before.exact_match + 0.03, "\n".join(report)
        assert figures.over_slip > before.over_slip, "\n".join(report)
        if name in ("dpo", "kto"):  # ORPO and GRPO (beta 0) have no reference: their reward is not a ratio to it
            assert figures.reward_accuracy(before) >= 0.7, "\n".join(report)
    assert last > first + 0.03, "\n".join(report)
    assert ranking >= 0.7, "\n".join(report)
