"""Parity of zoo's training with its Python twins in training mode (tests/python/parity.cpp writes the cases).

    /usr/bin/python3 tests/python/train_parity.py ROOT

Each directory of ROOT is one case; options.json's "kind" says which:
- "train": weights.pt (zoo's weights before training), options.json (model, options, task, task_options, the
  optimizer's settings, the prior) and case.pt (the seed, the batches, and what zoo's Trainer::train_step gave:
  each step's loss and logged terms, the last step's gradients, every parameter and buffer after the steps, and the
  losses of the same steps at another seed). The twin takes the same steps with zoo_training.train_step (objectives,
  auxiliary losses and priors written from their formulas). Noise and dropout masks are the same tensors on both
  sides: both draw them from LibTorch's CPU generator (one build: Debian's python3-torch is zoo's LibTorch) seeded
  alike, in the same order; a case that draws any must also differ from the other seed's losses by more than 100
  times the tolerance, so a mask or a noise that did not matter cannot pass for one that was reproduced.
- "iwae": the IWAE bound of a batch and its gradients, the eps from a CPU generator with the case's seed.
- "probe": ELMo's downstream ScalarMix probe (training/probe.h) retrained here: softmax(s), gamma, accuracies.
Tolerance: the largest absolute difference divided by max(1, largest absolute value of zoo's tensor), 1e-5 (2e-5
for the weights after three steps). Prints one line per case; exits 1 if any fails.
"""
import json
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_training  # noqa: E402
import zoo_twins  # noqa: E402
from parity import TOLERANCE, run_cases, scaled_diff  # noqa: E402


def load_twin(path, spec):
    return zoo_twins.load_weights(zoo_twins.build(spec["model"], spec["options"]), os.path.join(path, "weights.pt"))


class Worst:
    def __init__(self):
        self.value, self.what = 0.0, ""

    def add(self, what, ours, theirs):
        d = scaled_diff(ours.detach(), theirs) if theirs is not None else float("inf")
        if not d <= self.value:
            self.value, self.what = d, what


def train_steps(twin, spec, case, seed):
    torch.manual_seed(seed)
    twin.train()
    t = spec["train"]
    optimizer = zoo_training.make_optimizer(t, twin.parameters())
    prior = zoo_training.Prior(spec["prior"])
    losses, terms = [], []
    for batch in case["batches"]:
        loss, logged = zoo_training.train_step(twin, optimizer, prior, spec["task"], batch, spec["options"],
                                               spec["task_options"], t["clip_grad"])
        losses.append(loss.item())
        terms.append(logged)
    return torch.tensor(losses, dtype=torch.float64), terms


def run_train(path, spec, case):
    twin = load_twin(path, spec)
    losses, terms = train_steps(twin, spec, case, case["seed"])
    worst = Worst()
    worst.add("loss", losses, case["losses"])
    for step, (ours, theirs) in enumerate(zip(terms, case["terms"])):
        for name, value in ours.items():  # zoo logs more (e.g. expert_load); every term the twin has is compared
            worst.add("step %d %s" % (step, name), value.double(), theirs.get(name))
    for name, p in twin.named_parameters():
        worst.add("gradient of " + name, p.grad if p.grad is not None else torch.zeros_like(p), case["grads"][name])
    after = dict(twin.named_parameters())
    after.update(dict(twin.named_buffers()))
    if set(after) != set(case["after"]):
        raise ValueError("parameters and buffers differ: %s" % sorted(set(after) ^ set(case["after"])))
    for name, value in after.items():
        worst.add("after the steps, " + name, value.double(), case["after"][name].double())
    tolerance = 2 * TOLERANCE
    ok = worst.value <= tolerance
    note = ""
    if spec["random"]:
        apart = (losses - case["other_seed_losses"]).abs().max().item()
        note = "; another seed's losses differ by %.3g" % apart
        ok = ok and apart > 100 * tolerance
    return ok, "largest difference %.3g (%s)%s" % (worst.value, worst.what, note)


def run_iwae(path, spec, case):
    twin = load_twin(path, spec)
    generator = torch.Generator().manual_seed(case["seed"])
    bound = zoo_training.iwae_bound(twin, case["input"], case["k"], generator)
    bound.sum().backward()
    worst = Worst()
    worst.add("bound", bound, case["bound"])
    for name, p in twin.named_parameters():
        worst.add("gradient of " + name, p.grad, case["grads"][name])
    return worst.value <= TOLERANCE, "largest difference %.3g (%s)" % (worst.value, worst.what)


def run_probe(path, spec, case):
    """train_probe written again: layers standardised with the training items' mean and (population) deviation,
    ScalarMix then Linear initialised after manual_seed(seed), full-batch Adam with weight decay on the classifier
    only."""
    train, test, labels = case["train"], case["test"], case["labels"]
    standard = []
    for h in case["layers"]:
        seen = h[train]
        standard.append((h - seen.mean(0)) / (seen.std(0, unbiased=False) + 1e-6))
    torch.manual_seed(spec["seed"])
    mix = zoo_twins.ScalarMix(len(standard))
    classifier = nn.Linear(standard[0].shape[1], spec["classes"])
    optimizer = torch.optim.Adam([{"params": classifier.parameters(), "weight_decay": spec["weight_decay"]},
                                  {"params": mix.parameters(), "weight_decay": 0.0}], lr=spec["lr"])
    features = lambda index: mix([h[index] for h in standard], None)  # noqa: E731
    for _ in range(spec["steps"]):
        optimizer.zero_grad()
        nn.functional.cross_entropy(classifier(features(train)), labels[train]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = torch.tensor([classifier(features(i)).argmax(1).eq(labels[i]).double().mean().item()
                                 for i in (train, test)], dtype=torch.float64)
        weights = torch.softmax(torch.cat(list(mix.scalar_parameters)), 0).double()
    worst = Worst()
    worst.add("softmax(s)", weights, case["weights"])
    worst.add("gamma", mix.gamma.double().reshape(()), torch.tensor(case["gamma"], dtype=torch.float64))
    worst.add("accuracy", accuracy, case["accuracy"])
    moved = (weights - 1 / len(standard)).abs().max().item()  # the mix learned something in these steps
    return worst.value <= TOLERANCE and moved > 1e-3, "largest difference %.3g (%s); softmax(s) %s" % (
        worst.value, worst.what, [round(w, 4) for w in weights.tolist()])


def check_case(path):
    spec = json.load(open(os.path.join(path, "options.json")))
    case = torch.load(os.path.join(path, "case.pt"))
    return {"train": run_train, "iwae": run_iwae, "probe": run_probe}[spec["kind"]](path, spec, case)


if __name__ == "__main__":
    run_cases(sys.argv[1], check_case)
