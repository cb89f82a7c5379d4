"""zoo's training objectives, priors and training step, written in Python from their formulas (README, docs/ and the
papers), for the training-mode parity test (train_parity.py) and the timing server (bench_twins.py).

    task_loss(task, twin, batch, options, task_options) -> (loss, {term: value})
    Prior(spec).penalty(twin), .before_step(twin, optimizer), .after_step(twin, optimizer)

A training step is zoo's Trainer::train_step: zero_grad, the task's loss plus the layers' auxiliary losses plus
the prior's penalty, backward, the decoupled decay, clipping, the optimizer step, the proximal step.
"""
import fnmatch
import math

import torch
import torch.nn.functional as F


def auxiliary_loss(twin):
    """The sum of every layer's load-balancing loss of this forward (zoo: models::AuxiliaryLoss), or None."""
    total = None
    for module in twin.modules():
        loss = getattr(module, "aux_loss", None)
        if loss is not None:
            total = loss if total is None else total + loss
    return total


def soft_dice_loss(logits, labels, eps=1e-6):
    """1 - mean over classes of (2 |P * T| + eps) / (|P| + |T| + eps), P the softmax, T the one-hot labels, sums
    over the batch and the pixels (Milletari et al. 2016, V-Net, eq. 1, smoothed)."""
    p = torch.softmax(logits, 1)
    t = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    dims = [0] + list(range(2, logits.dim()))
    return 1 - ((2 * (p * t).sum(dims) + eps) / (p.sum(dims) + t.sum(dims) + eps)).mean()


def gaussian_log_density(z, mu, logvar):
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def bernoulli_log_likelihood(logits, x):
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def iwae_bound(twin, x, k, generator):
    """Burda et al. 2016, eq. 8: log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x), as one logsumexp over the
    k samples (all k at once; eps drawn as [k, N, latent] from `generator`)."""
    mu, logvar = twin.encode(x)
    n, latent = mu.shape
    eps = torch.randn(k, n, latent, generator=generator)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = twin.decode(z.reshape(k * n, latent))
    log_px = bernoulli_log_likelihood(logits, x.repeat(k, 1, 1, 1)).view(k, n)
    log_w = log_px + gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)) - gaussian_log_density(
        z, mu, logvar)
    return torch.logsumexp(log_w, 0) - math.log(k)


def task_loss(task, twin, batch, options, task_options=None):
    """The loss of one training batch and the terms zoo logs with it."""
    task_options = task_options or {}
    x, y = batch["input"], batch.get("target")
    terms = {}
    if task == "classify":
        logits = twin(x).float()
        loss = F.cross_entropy(logits, y)
        terms["accuracy"] = logits.detach().argmax(1).eq(y).sum() / x.shape[0]
    elif task == "segment":
        logits = twin(x).float()
        loss = F.cross_entropy(logits, y)
        if task_options.get("dice", 0) > 0:
            dice = soft_dice_loss(logits, y)
            terms["ce"], terms["dice_loss"] = loss.detach(), dice.detach()
            loss = loss + task_options["dice"] * dice
        terms["pixel_accuracy"] = logits.detach().argmax(1).eq(y).float().mean()
    elif task == "vae":
        # The negative ELBO (Kingma & Welling 2014): E_q[-log p(x|z)] with one reparameterised sample, plus beta
        # times the closed-form KL(N(mu, sigma^2) || N(0, I)) (their appendix B); both averaged over the batch.
        if options.get("binarize", False):
            x = torch.bernoulli(x)
        logits, mu, logvar = twin(x)
        recon = -bernoulli_log_likelihood(logits.float(), x).mean()
        kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()
        loss = recon + options.get("beta", 1.0) * kl
        terms["recon"], terms["kl"], terms["elbo"] = recon.detach(), kl.detach(), -(recon + kl).detach()
    elif task == "bilm":
        # Peters et al. 2018, eq. (the biLM): the mean of the forward and backward next-word cross-entropies, each
        # averaged over the positions that have a target (-1: padding).
        fwd, bwd = twin.lm_states(x)
        means = []
        for states, target in ((fwd, y[:, 0]), (bwd, y[:, 1])):
            t = target.reshape(-1)
            nll = F.cross_entropy(twin.softmax(states).float().reshape(-1, twin.softmax.out_features), t,
                                  ignore_index=-1, reduction="sum")
            means.append(nll / (t >= 0).sum().clamp_min(1))
        loss = (means[0] + means[1]) / 2
        terms["forward_nll"], terms["backward_nll"] = means[0].detach(), means[1].detach()
    else:
        raise ValueError("no Python loss for task '%s'" % task)
    return loss, terms


class Prior:
    """MAP training's -log p(w) (training/priors.h): Gaussian lambda/2 ||w||^2, Laplace lambda ||w||_1, on the
    parameters with 2 or more dimensions (all with include_all), lambda per layer by the first matching glob.
    decoupled: w <- (1 - tau lambda) w before the step; proximal: w <- sign(w) max(|w| - tau lambda, 0) after it;
    tau the step the optimizer takes along a constant gradient (SGD: lr (1 - dampening) / (1 - momentum), Nesterov
    lr (1 + momentum (1 - dampening) / (1 - momentum)); Adam and AdamW: lr / (sqrt(v_hat) + eps), proximal Adam of
    Yun et al. 2021), so that the fixed point is the MAP estimate."""

    def __init__(self, spec):
        self.kind = spec.get("kind", "none")
        self.lam = spec.get("lambda", 0.0)
        self.layers = [(l["pattern"], l["lambda"]) for l in spec.get("layers", [])]
        self.decoupled, self.proximal = spec.get("decoupled", False), spec.get("proximal", False)
        self.include_all = spec.get("include_all", False)

    def parameters(self, twin):
        out = []
        if self.kind == "none":
            return out
        for name, p in twin.named_parameters():
            if (p.dim() < 2 and not self.include_all) or not p.requires_grad:
                continue
            lam = next((l for pattern, l in self.layers if fnmatch.fnmatchcase(name, pattern)), self.lam)
            if lam > 0:
                out.append((p, lam))
        return out

    def penalty(self, twin):
        terms = [0.5 * lam * p.pow(2).sum() if self.kind == "gaussian" else lam * p.abs().sum()
                 for p, lam in self.parameters(twin)]
        return sum(terms[1:], terms[0]) if terms else torch.zeros(())

    @staticmethod
    def step_size(optimizer, p, predict):
        group = optimizer.param_groups[0]
        lr = group["lr"]
        if isinstance(optimizer, torch.optim.SGD):
            beta, d = group["momentum"], group["dampening"]
            if beta == 0:
                return lr
            return lr * (1 + beta * (1 - d) / (1 - beta)) if group["nesterov"] else lr * (1 - d) / (1 - beta)
        _, beta2 = group["betas"]
        state = optimizer.state.get(p, {})
        v = state["exp_avg_sq"].clone() if "exp_avg_sq" in state else torch.zeros_like(p)
        step = int(state["step"]) if "step" in state else 0
        if predict and p.grad is not None:
            g = p.grad
            if isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW) and \
                    group["weight_decay"] != 0:
                g = g + group["weight_decay"] * p
            v = beta2 * v + (1 - beta2) * g * g
            step += 1
        if step == 0:
            return torch.full_like(p, lr)
        return lr / ((v / (1 - beta2 ** step)).sqrt() + group["eps"])

    @torch.no_grad()
    def before_step(self, twin, optimizer):
        if self.decoupled:
            for p, lam in self.parameters(twin):
                p.mul_(1.0 - lam * self.step_size(optimizer, p, True))

    @torch.no_grad()
    def after_step(self, twin, optimizer):
        if self.proximal:
            for p, lam in self.parameters(twin):
                p.copy_(p.sign() * (p.abs() - lam * self.step_size(optimizer, p, False)).clamp_min(0))


def make_optimizer(spec, parameters):
    name, lr = spec.get("optimizer", "adam"), spec.get("lr", 1e-3)
    decay = spec.get("weight_decay", 0.0)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=spec.get("momentum", 0.9), weight_decay=decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=decay)


def train_step(twin, optimizer, prior, task, batch, options, task_options=None, clip_grad=0.0):
    """One step as zoo's Trainer::train_step; returns the loss (before the step) and the logged terms."""
    optimizer.zero_grad()
    loss, terms = task_loss(task, twin, batch, options, task_options)
    aux = auxiliary_loss(twin)
    if aux is not None:
        terms["aux"] = aux.detach()
        loss = loss + aux
    if prior is not None and prior.kind != "none":
        # In the loss; only its value with the decoupled and proximal forms, which act on the weights instead.
        penalty = prior.penalty(twin)
        terms["prior"] = penalty.detach()
        loss = loss + (penalty.detach() if prior.decoupled or prior.proximal else penalty)
    loss.backward()
    if prior is not None:
        prior.before_step(twin, optimizer)
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(twin.parameters(), clip_grad)
    optimizer.step()
    if prior is not None:
        prior.after_step(twin, optimizer)
    return loss.detach(), terms
