"""Python twins of zoo's models: the same architectures with the same parameter names, written the way a PyTorch
user would write them, so that `twin.load_state_dict(weights of a zoo model.pt)` works name for name and the
outputs and gradients can be compared (tests/python/parity.py).

build(name, options) takes the complete option set of a zoo model (config.json's "options").
"""
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- mlp, cnn -----------------------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self, in_features, hidden, num_classes, dropout):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


def conv_stem(in_channels, image_size, channels):
    layers, size = [], image_size
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, size = c, size // 2
    return nn.Sequential(*layers), in_channels, size


class CNN(nn.Module):
    def __init__(self, in_channels, image_size, channels, hidden, num_classes, dropout):
        super().__init__()
        self.features, c, s = conv_stem(in_channels, image_size, channels)
        self.classifier = nn.Sequential(nn.Linear(c * s * s, hidden), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# ---- conv1d .. conv4d ---------------------------------------------------------------------------------------

class Conv4d(nn.Module):
    """out[:, :, t] = bias + sum_i conv3d(x[:, :, t*s - p + i*d], weight[:, :, i]) over frames inside the input."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        four = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * 4
        self.kernel_size, self.stride, self.padding, self.dilation = map(four, (kernel_size, stride, padding, dilation))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.weight[0].numel()), 1 / math.sqrt(self.weight[0].numel()))

    def forward(self, x):
        (k, s, p, d), t_in = (self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]), x.shape[2]
        t_out = (t_in + 2 * p - d * (k - 1) - 1) // s + 1  # Python's // floors, as Conv3d's rule
        if t_out <= 0:
            raise ValueError(f"Conv4d: time axis of length {t_in} is too short for kernel {k}")
        frames = []
        for t in range(t_out):
            acc = None
            for i in range(k):
                f = t * s - p + i * d
                if 0 <= f < t_in:
                    y = F.conv3d(x[:, :, f], self.weight[:, :, i], None, self.stride[1:], self.padding[1:],
                                 self.dilation[1:])
                    acc = y if acc is None else acc + y
            frames.append(acc)
        out = torch.stack(frames, 2)
        # As the C++: the bias in the taps' type (under autocast a bfloat16 output stays bfloat16).
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1, 1, 1)


class ConvNet(nn.Module):
    def __init__(self, dims, in_channels, channels, num_classes):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d, 4: Conv4d}[dims]
        layers = []
        for i, c in enumerate(channels):
            layers += [conv(in_channels, c, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
            in_channels = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        # As the C++: the global average pool and the head in float32 under autocast (a no-op in float32).
        maps = self.features(x).flatten(2)
        pooled = maps.mean(2, dtype=torch.float32) if maps.dtype == torch.bfloat16 else maps.mean(2)
        with torch.autocast("cpu", enabled=False):
            return self.head(pooled)


# ---- vae ----------------------------------------------------------------------------------------------------

class VAE(nn.Module):
    def __init__(self, arch, in_channels, image_size, hidden, latent, **_):
        super().__init__()
        self.arch, self.shape = arch, (in_channels, image_size, image_size)
        pixels = in_channels * image_size * image_size
        if arch == "mlp":
            self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU())
            self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels))
        else:
            s = image_size // 4
            self.encoder = nn.Sequential(nn.Conv2d(in_channels, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1),
                                         nn.ReLU(), nn.Flatten(), nn.Linear(64 * s * s, hidden), nn.ReLU())
            self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 64 * s * s), nn.ReLU(),
                                         nn.Unflatten(1, (64, s, s)), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                         nn.ConvTranspose2d(32, in_channels, 4, 2, 1))
        self.fc_mu = nn.Linear(hidden, latent)
        self.fc_logvar = nn.Linear(hidden, latent)

    def encode(self, x):
        h = self.encoder(x.flatten(1) if self.arch == "mlp" else x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.decoder(z).view(z.shape[0], *self.shape)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)), mu, logvar


# ---- unet, deconvnet ----------------------------------------------------------------------------------------

def conv_nd(dims, *args, **kwargs):
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(*args, **kwargs)


def bn_nd(dims, c):
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(c)


class DoubleConv(nn.Module):
    def __init__(self, dims, cin, cout):
        super().__init__()
        self.double_conv = nn.Sequential(conv_nd(dims, cin, cout, 3, padding=1, bias=False), bn_nd(dims, cout), nn.ReLU(),
                                         conv_nd(dims, cout, cout, 3, padding=1, bias=False), bn_nd(dims, cout), nn.ReLU())

    def forward(self, x):
        return self.double_conv(x)


class UNetUp(nn.Module):
    def __init__(self, dims, cin, cout, upsample):
        super().__init__()
        self.dims, self.mode = dims, upsample
        if upsample == "transpose":
            self.up = (nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d)(cin, cout, 2, stride=2)
        else:
            self.up = conv_nd(dims, cin, cout, 3, padding=1)
        self.conv = DoubleConv(dims, 2 * cout, cout)

    def upsample(self, x):
        if self.mode == "transpose":
            return self.up(x)
        return self.up(F.interpolate(x, scale_factor=2.0, mode="bilinear" if self.dims == 2 else "trilinear",
                                     align_corners=False))


def fit_input(x, dims, multiple):
    pads = []
    for s in reversed(x.shape[2:]):
        pads += [0, (s + multiple - 1) // multiple * multiple - s]
    return F.pad(x, pads) if any(pads) else x


def crop_to(y, x):
    for d in range(2, x.dim()):
        y = y.narrow(d, 0, x.shape[d])
    return y


def make_encoder(dims, in_channels, levels, base_channels):
    """DoubleConv blocks of base_channels * 2^i channels, i = 0 .. levels - 1 (both U-Net and DeconvNet)."""
    return nn.ModuleList(DoubleConv(dims, in_channels if i == 0 else base_channels << (i - 1), base_channels << i)
                         for i in range(levels))


class UNet(nn.Module):
    def __init__(self, encoder, num_classes, upsample):
        super().__init__()
        dims, in_channels, levels, base_channels = (encoder[k] for k in ("dims", "in_channels", "levels", "base_channels"))
        self.dims, self.multiple = dims, 1 << (levels - 1)
        self.encoder = make_encoder(dims, in_channels, levels, base_channels)
        self.decoder = nn.ModuleList(UNetUp(dims, base_channels << (i + 1), base_channels << i, upsample)
                                     for i in range(levels - 2, -1, -1))
        self.head = conv_nd(dims, base_channels, num_classes, 1)

    def forward(self, x):
        h, features = fit_input(x, self.dims, self.multiple), []
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        for i, block in enumerate(self.encoder):
            h = block(pool(h, 2) if i > 0 else h)
            features.append(h)
        h = features[-1]
        for k, up in enumerate(self.decoder):
            h = up.conv(torch.cat([features[-2 - k], up.upsample(h)], 1))
        return crop_to(self.head(h), x)


class DeconvNetUp(nn.Module):
    def __init__(self, dims, cin, cout):
        super().__init__()
        self.dims = dims
        self.reduce = nn.Sequential(conv_nd(dims, cin, cout, 3, padding=1, bias=False), bn_nd(dims, cout), nn.ReLU())
        self.conv = DoubleConv(dims, cout, cout)

    def forward(self, x, indices, size):
        unpool = F.max_unpool2d if self.dims == 2 else F.max_unpool3d
        # Max-unpooling has no bfloat16 CPU kernel in this torch, so under autocast it runs in float32 here (the C++
        # unpools in bfloat16 with zoo's own loop, ops/max_pool.h).
        return self.conv(unpool(self.reduce(x).float(), indices, 2, 2, output_size=size))


class DeconvNet(nn.Module):
    def __init__(self, encoder, num_classes):
        super().__init__()
        dims, in_channels, levels, base_channels = (encoder[k] for k in ("dims", "in_channels", "levels", "base_channels"))
        self.dims, self.multiple = dims, 1 << (levels - 1)
        self.encoder = make_encoder(dims, in_channels, levels, base_channels)
        self.decoder = nn.ModuleList(DeconvNetUp(dims, base_channels << (i + 1), base_channels << i)
                                     for i in range(levels - 2, -1, -1))
        self.head = conv_nd(dims, base_channels, num_classes, 1)

    def forward(self, x):
        h, switches, sizes = fit_input(x, self.dims, self.multiple), [], []
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        for i, block in enumerate(self.encoder):
            if i > 0:
                sizes.append(h.shape[2:])
                # 3-D max pooling with indices has no bfloat16 CPU kernel either (float32; the C++ pools in bfloat16).
                h, idx = pool(h if self.dims == 2 else h.float(), 2, 2, return_indices=True)
                switches.append(idx)
            h = block(h)
        for k, up in enumerate(self.decoder):
            level = len(switches) - 1 - k
            h = up(h, switches[level], sizes[level])
        return crop_to(self.head(h), x)


# ---- ode-resnet ---------------------------------------------------------------------------------------------

def norm_groups(c):
    g = max(1, min(32, c // 8))
    while c % g:
        g -= 1
    return g


class ConvODEFunc(nn.Module):
    def __init__(self, c, time):
        super().__init__()
        g, extra = norm_groups(c), 1 if time else 0
        self.time = time
        self.norm1, self.conv1 = nn.GroupNorm(g, c), nn.Conv2d(c + extra, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(g, c), nn.Conv2d(c + extra, c, 3, padding=1)
        self.norm3 = nn.GroupNorm(g, c)

    def with_time(self, t, h):
        if not self.time:
            return h
        return torch.cat([torch.full((h.shape[0], 1, h.shape[2], h.shape[3]), t, dtype=h.dtype), h], 1)

    def forward(self, t, y):
        h = self.conv1(self.with_time(t, F.relu(self.norm1(y))))
        h = self.conv2(self.with_time(t, F.relu(self.norm2(h))))
        return self.norm3(h)


# Dormand-Prince 5(4) written from torchdiffeq's published algorithm (rtqichen/torchdiffeq, _impl/dopri5.py,
# rk_common.py, misc.py, interp.py), not from zoo's code: the Butcher tableau with torchdiffeq's c_sol and c_error,
# _select_initial_step (Hairer, Norsett & Wanner, section II.4), _compute_error_ratio with the RMS norm,
# _optimal_step_size (safety 0.9, ifactor 10, dfactor 0.2, exponent 1/5; no shrinking after an accepted step) and
# the 4th-order dense output through the mid-point DPS_C_MID. torchdiffeq steps past t1 and interpolates there
# (last_step="interpolate"); zoo shortens its last step to land on t1 (last_step="shorten", the one documented
# difference), which is how the parity test runs it.
DOPRI5_ALPHA = [1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
DOPRI5_BETA = [[1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
               [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
               [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
               [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
DOPRI5_C_SOL = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
DOPRI5_C_ERROR = [35 / 384 - 1951 / 21600, 0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
                  -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60]
DOPRI5_C_MID = [6025192743 / 30085553152 / 2, 0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
                187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2]


def error_norm(t):
    return t.detach().double().pow(2).mean().sqrt().item()


def weighted_sum(coefficients, k):
    total = None
    for c, ki in zip(coefficients, k):
        if c != 0:
            total = c * ki if total is None else total + c * ki
    return total


def select_initial_step(f, t0, y0, f0, rtol, atol, order=4):
    with torch.no_grad():
        scale = atol + y0.abs() * rtol
        d0, d1 = error_norm(y0 / scale), error_norm(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = f(t0 + h0, y0 + h0 * f0)
        d2 = error_norm((f1 - f0) / scale) / h0
        h1 = max(1e-6, h0 * 1e-3) if d1 <= 1e-15 and d2 <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / (order + 1))
        return min(100 * h0, h1)


def runge_kutta_step(f, y0, f0, t0, dt):
    k = [f0]
    for alpha, beta in zip(DOPRI5_ALPHA, DOPRI5_BETA):
        k.append(f(t0 + alpha * dt, y0 + dt * weighted_sum(beta, k)))
    # The last stage is at y1 itself (FSAL): k[6] = f(t0 + dt, y1).
    y1 = y0 + dt * weighted_sum(DOPRI5_C_SOL, k)
    return y1, k[-1], dt * weighted_sum(DOPRI5_C_ERROR, k), k


def optimal_step_size(dt, ratio, safety=0.9, ifactor=10.0, dfactor=0.2, order=5):
    if ratio == 0:
        return dt * ifactor
    if ratio < 1:
        dfactor = 1.0
    return dt * min(ifactor, max(safety / ratio ** (1 / order), dfactor))


def interpolate(y0, y1, y_mid, f0, f1, dt, x):
    """torchdiffeq's _interp_fit / _interp_evaluate: the quartic p with p(0) = y0, p(1/2) = y_mid, p(1) = y1,
    p'(0) = dt f0, p'(1) = dt f1, at x = (t - t0) / dt."""
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    d = dt * f0
    return y0 + x * (d + x * (c + x * (b + x * a)))


def dopri5(f, y0, t0, t1, rtol, atol, max_steps, last_step="shorten", stats=None):
    if t1 < t0:  # torchdiffeq integrates backwards by flipping time
        return dopri5(lambda t, y: -f(-t, y), y0, -t0, -t1, rtol, atol, max_steps, last_step, stats)
    f0 = f(t0, y0)
    dt = select_initial_step(f, t0, y0, f0.detach(), rtol, atol)
    t, y, accepted, rejected = t0, y0, 0, 0
    while t < t1:
        if accepted + rejected >= max_steps:
            raise RuntimeError("dopri5: max_num_steps exceeded")
        shorten = last_step == "shorten" and t + dt >= t1 - 1e-12 * (t1 - t)
        step = t1 - t if shorten else dt
        y1, f1, error, k = runge_kutta_step(f, y, f0, t, step)
        with torch.no_grad():
            tolerance = atol + rtol * torch.max(y.abs(), y1.abs())
            ratio = error_norm(error / tolerance)
        if math.isfinite(ratio) and ratio <= 1:
            accepted += 1
            if not shorten and t + step > t1:  # torchdiffeq: stepped past t1, interpolate back to it
                y_mid = y + step * weighted_sum(DOPRI5_C_MID, k)
                y = interpolate(y, y1, y_mid, f0, f1, step, (t1 - t) / step)
                t = t1
                break
            t, y, f0 = (t1 if shorten else t + step), y1, f1
        else:
            rejected += 1
        dt = step * 0.2 if not math.isfinite(ratio) else optimal_step_size(step, ratio)
    if stats is not None:
        stats.update(accepted=accepted, rejected=rejected)
    return y


def odeint(f, y, t0, t1, method, steps, rtol, atol, max_steps, last_step="shorten"):
    if method == "dopri5":
        return dopri5(f, y, t0, t1, rtol, atol, max_steps, last_step)
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        if method == "euler":
            y = y + h * f(t, y)
        elif method == "midpoint":
            y = y + h * f(t + h / 2, y + (h / 2) * f(t, y))
        else:  # rk4, 3/8 rule
            k1 = f(t, y)
            k2 = f(t + h / 3, y + (h / 3) * k1)
            k3 = f(t + 2 * h / 3, y + h * (k2 - k1 / 3))
            k4 = f(t + h, y + h * (k1 - k2 + k3))
            y = y + (h / 8) * (k1 + 3 * (k2 + k3) + k4)
    return y


class ODEFunc(nn.Module):
    """zoo::models::MLPField: the vector field of torchdiffeq's examples/ode_demo.py (t is not an input)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, y):
        return self.net(y)


class ODEFuncSolve(ODEFunc):
    """MLPField::solve: y(t1) of the ODEFunc from y(t0) = y0 by a fixed-step solver, through autograd."""

    def __init__(self, dim, hidden, method, steps, t0, t1):
        super().__init__(dim, hidden)
        self.method, self.steps, self.t0, self.t1 = method, steps, t0, t1

    def forward(self, y0):
        return odeint(lambda t, y: self.net(y), y0, self.t0, self.t1, self.method, self.steps, 0, 0, 0)


class ODEBlock(nn.Module):
    def __init__(self, c, time, solver):
        super().__init__()
        self.odefunc, self.solver = ConvODEFunc(c, time), solver

    def forward(self, x):
        return odeint(self.odefunc, x, 0.0, 1.0, **self.solver)


class EulerResNet(nn.Module):
    def __init__(self, c, steps, step_size, time):
        super().__init__()
        self.h = step_size
        self.blocks = nn.ModuleList(ConvODEFunc(c, time) for _ in range(steps))

    def forward(self, y):
        for i, block in enumerate(self.blocks):
            y = y + block(i * self.h, y) if self.h == 1.0 else y + self.h * block(i * self.h, y)
        return y


class ODEResNet(nn.Module):
    def __init__(self, in_channels, num_classes, channels, block, solver, step_size, time):
        super().__init__()
        c, g = channels, norm_groups(channels)
        self.downsampling = nn.Sequential(nn.Conv2d(in_channels, c, 3), nn.GroupNorm(g, c), nn.ReLU(),
                                          nn.Conv2d(c, c, 4, 2, 1), nn.GroupNorm(g, c), nn.ReLU(), nn.Conv2d(c, c, 4, 2, 1))
        if block == "ode":
            self.feature = ODEBlock(c, time, solver)
        else:
            self.feature = EulerResNet(c, solver["steps"], step_size, time)
        self.head = nn.Sequential(nn.GroupNorm(g, c), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                                  nn.Linear(9 * c, num_classes))

    def forward(self, x):
        return self.head(self.feature(self.downsampling(x)))


# ---- mhc-resnet ---------------------------------------------------------------------------------------------

def sinkhorn_knopp(logits, iterations):
    """Log-space Sinkhorn-Knopp: columns, then rows, `iterations` times (in float64, as zoo's fused kernel)."""
    L = logits.double()
    for _ in range(iterations):
        L = L - L.logsumexp(-2, keepdim=True)
        L = L - L.logsumexp(-1, keepdim=True)
    return L.exp().to(logits.dtype)


def rms_norm(v, gain_minus_one, eps):
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * (1 + gain_minus_one)


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class MHC(nn.Module):
    def __init__(self, width, streams, variant, sinkhorn_iterations, layer_index, branch, alpha_init=0.01, eps=1e-6):
        super().__init__()
        n, C = streams, width
        self.n, self.variant, self.iterations, self.eps = n, variant, sinkhorn_iterations, eps
        self.branch = branch
        hc = variant == "hc"
        res_size = math.factorial(n) if variant == "mhc-lite" else n * n
        pre = torch.zeros(n) if hc else torch.full((n,), -1.0)
        pre[layer_index % max(n, 1)] = 1.0
        post = torch.ones(n) if hc else pre.clone()
        if hc:
            res = torch.eye(n)
        elif variant == "mhc":
            res = torch.full((n, n), -8.0).fill_diagonal_(0.0)
        else:
            res = torch.full((res_size,), -8.0)
            res[0] = 0.0
        self.b_pre, self.b_post, self.b_res = nn.Parameter(pre), nn.Parameter(post), nn.Parameter(res)
        self.norm_weight = nn.Parameter(torch.zeros(C if hc else n * C))
        self.phi_pre = nn.Parameter(torch.zeros(C) if hc else torch.zeros(n * C, n))
        self.phi_post = nn.Parameter(torch.zeros(C) if hc else torch.zeros(n * C, n))
        self.phi_res = nn.Parameter(torch.zeros(n, C) if hc else torch.zeros(n * C, res_size))
        self.alpha_pre, self.alpha_post, self.alpha_res = (nn.Parameter(torch.tensor(alpha_init)) for _ in range(3))
        if variant == "mhc-lite":
            perms = list(itertools.permutations(range(n)))
            p = torch.zeros(len(perms), n, n)
            for k, perm in enumerate(perms):
                for i in range(n):
                    p[k, i, perm[i]] = 1
            self.register_buffer("permutations", p)

    def forward(self, x):
        B, n = x.shape[0], self.n
        features = x.flatten(3).mean(-1) if x.dim() > 3 else x
        if self.variant == "hc":
            xt = rms_norm(features, self.norm_weight, self.eps)
            pre = self.b_pre + self.alpha_pre * torch.tanh(xt @ self.phi_pre)
            post = self.b_post + self.alpha_post * torch.tanh(xt @ self.phi_post)
            res = self.b_res + self.alpha_res * torch.tanh(self.phi_res @ xt.transpose(1, 2))
        else:
            xv = rms_norm(features.reshape(B, -1), self.norm_weight, self.eps)
            pre = torch.sigmoid(self.b_pre + self.alpha_pre * (xv @ self.phi_pre))
            post = 2 * torch.sigmoid(self.b_post + self.alpha_post * (xv @ self.phi_post))
            r = self.b_res.reshape(1, -1) + self.alpha_res * (xv @ self.phi_res)
            if self.variant == "mhc":
                res = sinkhorn_knopp(r.reshape(B, n, n), self.iterations)
            else:
                k = self.permutations.shape[0]
                res = (torch.softmax(r, -1) @ self.permutations.reshape(k, n * n)).reshape(B, n, n)
        per_stream = lambda w: w.view(B, n, *([1] * (x.dim() - 2)))
        out = self.branch((x * per_stream(pre)).sum(1))
        return (res @ x.flatten(2)).view(x.shape) + per_stream(post) * out.unsqueeze(1)


class MHCResNet(nn.Module):
    def __init__(self, in_channels, num_classes, channels, blocks, variant, mhc):
        super().__init__()
        c, streams = channels, mhc["streams"]
        self.variant, self.streams = variant, streams
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(), nn.MaxPool2d(2))
        if variant == "residual":
            self.blocks = nn.ModuleList(BasicBlock(c) for _ in range(blocks))
        else:
            self.blocks = nn.ModuleList(MHC(c, streams, variant, mhc["sinkhorn_iterations"], i, BasicBlock(c),
                                            mhc["alpha_init"], mhc["eps"]) for i in range(blocks))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):
        h = self.stem(x)
        if self.variant == "residual":
            for block in self.blocks:
                h = h + block(h)
        else:
            h = h.unsqueeze(1).expand(h.shape[0], self.streams, *h.shape[1:]).contiguous()
            for block in self.blocks:
                h = block(h)
            h = h.sum(1)
        return self.head(h)


# ---- moe ----------------------------------------------------------------------------------------------------

class Expert(nn.Module):
    def __init__(self, cin, hidden, cout):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(cin, hidden), nn.Linear(hidden, cout)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def normal_cdf(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def cv_squared(v):
    """Squared coefficient of variation, as tensor2tensor's expert_utils.cv_squared (Shazeer et al.'s code): the
    population variance over the experts, divided by the squared mean (+1e-10); 0 for one expert."""
    if v.numel() < 2:
        return v.new_zeros(())
    mean = v.sum() / v.numel()
    return ((v - mean) ** 2).sum() / v.numel() / (mean ** 2 + 1e-10)


class MixtureOfExperts(nn.Module):
    """Top-k (or softmax) routing, written from the papers rather than from zoo's code, so that a misreading shared
    by both would have to be made twice:
    - noisy top-k gating, Shazeer et al. 2017 (eq. 3-5): H(x)_i = (x W_g)_i + N(0, 1) softplus((x W_noise)_i),
      G(x) = softmax(KeepTopK(H(x), k)), in training mode only;
    - the smooth load (appendix A): P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / softplus((x W_noise)_i)),
      kth_excluding the k-th largest of H(x) without expert i, computed here expert by expert;
    - the cv loss (eq. 6-7, appendix A): w (CV(Importance)^2 + CV(Load)^2), Importance = sum_x G(x), Load = sum_x
      P(x, i) (the count of tokens routed to i where the gate has no noise);
    - the Switch loss (Fedus et al. 2021, eq. 4-6): alpha N sum_i f_i P_i;
    - capacity (GShard, Lepikhin et al. 2020, algorithm 1; Switch section 2.2): each expert takes at most
      capacity = max(1, ceil(capacity_factor * T k / N)) assignments, first choices of all tokens before second
      choices, in token order; an assignment over capacity is dropped (its gate is zero). A loop with counters.
    Each expert runs once on the rows routed to it."""

    def __init__(self, cin, cout, hidden, experts, gate, k, renormalize, gate_features=0, capacity_factor=0.0,
                 balance="switch", balance_coef=1e-2, shared_hidden=0, noise_epsilon=1e-2, eval_capacity_factor=0.0):
        super().__init__()
        self.mode, self.k, self.renormalize = gate, k, renormalize
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.balance, self.balance_coef, self.noise_epsilon = balance, balance_coef, noise_epsilon
        g = gate_features or cin
        self.gate = nn.Linear(g, experts, bias=False)
        if gate == "noisy-topk":
            self.noise = nn.Linear(g, experts, bias=False)
        self.experts = nn.ModuleList(Expert(cin, hidden, cout) for _ in range(experts))
        if shared_hidden > 0:  # a shared expert every token passes through (Residual-MoE, DeepSeekMoE)
            self.shared = Expert(cin, shared_hidden, cout)
        self.aux_loss = None

    def smooth_load(self, clean, noisy, std):
        columns = []
        for i in range(clean.shape[1]):
            others = torch.cat([noisy[:, :i], noisy[:, i + 1:]], 1)
            kth = others.topk(self.k, 1).values[:, self.k - 1]
            columns.append(normal_cdf((clean[:, i] - kth) / std[:, i]))
        return torch.stack(columns, 1).sum(0)

    def kept(self, index, capacity):
        counts, keep = [0] * len(self.experts), torch.zeros(index.shape, dtype=torch.bool)
        for choice in range(index.shape[1]):
            for token in range(index.shape[0]):
                e = int(index[token, choice])
                if counts[e] < capacity:
                    counts[e] += 1
                    keep[token, choice] = True
        return keep

    def forward(self, x, gate_input=None):
        n, tokens = len(self.experts), x.shape[0]
        g = x if gate_input is None else gate_input
        clean = self.gate(g)
        noisy = self.mode == "noisy-topk" and self.training
        std = F.softplus(self.noise(g)) + self.noise_epsilon if noisy else None
        logits = clean + torch.randn_like(clean) * std if noisy else clean
        probs = torch.softmax(logits, -1)
        base = self.shared(x) if hasattr(self, "shared") else 0
        if self.mode == "softmax":  # dense: every expert on every token; load = the mean probability
            if self.training and self.balance != "none":
                f = probs.detach().mean(0)
                self.aux_loss = self.balance_coef * (n * (f * probs.mean(0)).sum() if self.balance == "switch" else
                                                     cv_squared(probs.sum(0)) + cv_squared(f))
            else:
                self.aux_loss = None
            return base + sum(probs[:, i:i + 1] * e(x) for i, e in enumerate(self.experts))
        top, index = logits.topk(self.k, -1)
        gates = torch.softmax(top, -1) if self.renormalize else probs.gather(1, index)
        self.aux_loss = None
        if self.training and self.balance == "switch":
            f = torch.bincount(index.reshape(-1), minlength=n).to(x.dtype) / (tokens * self.k)
            self.aux_loss = self.balance_coef * n * (f * probs.mean(0)).sum()
        elif self.training and self.balance == "cv":
            importance = torch.zeros_like(probs).scatter(1, index, gates).sum(0)
            load = (self.smooth_load(clean, logits, std) if noisy and self.k < n else
                    torch.bincount(index.reshape(-1), minlength=n).to(x.dtype))
            self.aux_loss = self.balance_coef * (cv_squared(importance) + cv_squared(load))
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        keep = torch.ones(index.shape, dtype=torch.bool)
        if factor > 0:
            keep = self.kept(index, max(1, math.ceil(factor * tokens * self.k / n)))
        out = x.new_zeros(tokens, self.experts[0].fc2.out_features)
        for i, expert in enumerate(self.experts):
            token, slot = ((index == i) & keep).nonzero(as_tuple=True)
            if token.numel():
                weighted = expert(x[token]) * gates[token, slot].unsqueeze(1)
                # As the C++: under autocast the weighted outputs may be bfloat16 while x is float32.
                out = out.to(weighted.dtype) if out.dtype != weighted.dtype else out
                out.index_add_(0, token, weighted)
        return out + base


class MoEClassifier(nn.Module):
    def __init__(self, in_channels, image_size, channels, num_classes, dropout, moe):
        super().__init__()
        self.features, c, s = conv_stem(in_channels, image_size, channels)
        self.dropout = nn.Dropout(dropout)
        self.moe = MixtureOfExperts(c * s * s, num_classes, moe["hidden"], moe["experts"], moe["gate"], moe["k"],
                                    moe["renormalize"], gate_features=c, capacity_factor=moe["capacity_factor"],
                                    balance=moe["balance"], balance_coef=moe["balance_coef"],
                                    shared_hidden=moe.get("shared_hidden", 0),
                                    noise_epsilon=moe.get("noise_epsilon", 1e-2),
                                    eval_capacity_factor=moe.get("eval_capacity_factor", 0.0))

    def forward(self, x):
        maps = self.features(x)
        # As the C++: the gate's channel means accumulated and returned in float32 under autocast.
        means = maps.mean((2, 3), dtype=torch.float32) if maps.dtype == torch.bfloat16 else maps.mean((2, 3))
        return self.moe(self.dropout(maps.flatten(1)), means)


# ---- elmo ---------------------------------------------------------------------------------------------------

class Highway(nn.Module):
    def __init__(self, dim, num_layers):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(num_layers))

    def forward(self, x):
        for layer in self.layers:
            nonlinear, gate = layer(x).chunk(2, -1)
            gate = torch.sigmoid(gate)
            x = gate * x + (1 - gate) * F.relu(nonlinear)
        return x


class LstmWithProjection(nn.Module):
    def __init__(self, input_size, hidden_size, cell_size, cell_clip, proj_clip, go_forward):
        super().__init__()
        self.cell_size, self.hidden_size = cell_size, hidden_size
        self.cell_clip, self.proj_clip, self.go_forward = cell_clip, proj_clip, go_forward
        self.input_linearity = nn.Linear(input_size, 4 * cell_size, bias=False)
        self.state_linearity = nn.Linear(hidden_size, 4 * cell_size)
        self.state_projection = nn.Linear(cell_size, hidden_size, bias=False) if hidden_size != cell_size else None

    def forward(self, x, mask):
        n, steps = x.shape[:2]
        xs, keep = self.input_linearity(x), mask.to(x.dtype).unsqueeze(-1)
        h, c = x.new_zeros(n, self.hidden_size), x.new_zeros(n, self.cell_size)
        out = [None] * steps
        for s in range(steps):
            t = s if self.go_forward else steps - 1 - s
            i, f, g, o = (xs[:, t] + self.state_linearity(h)).chunk(4, 1)
            c_new = torch.sigmoid(i) * torch.tanh(g) + torch.sigmoid(f) * c
            if self.cell_clip > 0:
                c_new = c_new.clamp(-self.cell_clip, self.cell_clip)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if self.state_projection is not None:
                h_new = self.state_projection(h_new)
            if self.proj_clip > 0:
                h_new = h_new.clamp(-self.proj_clip, self.proj_clip)
            m = keep[:, t]
            c, h = m * c_new + (1 - m) * c, m * h_new + (1 - m) * h
            out[t] = h_new * m
        return torch.stack(out, 1)


class ScalarMix(nn.Module):
    def __init__(self, mixture_size, do_layer_norm=False):
        super().__init__()
        self.do_layer_norm = do_layer_norm
        self.scalar_parameters = nn.ParameterList(nn.Parameter(torch.zeros(1)) for _ in range(mixture_size))
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, tensors, mask):
        w = torch.softmax(torch.cat(list(self.scalar_parameters)), 0)
        out = 0
        for j, t in enumerate(tensors):
            if self.do_layer_norm:
                bm = mask.to(t.dtype).unsqueeze(-1)
                n = mask.to(t.dtype).sum() * t.shape[-1]
                masked = t * bm
                mean = masked.sum() / n
                var = (((masked - mean) * bm) ** 2).sum() / n
                t = (t - mean) / torch.sqrt(var + 1e-12)
            out = out + w[j] * t
        return self.gamma * out


class Elmo(nn.Module):
    def __init__(self, char_embedding, filters, highway_layers, max_word_length, projection_dim, cell_size,
                 num_layers, cell_clip, proj_clip, vocab_size, mix_layer_norm, dropout=0.0, **_):
        super().__init__()
        self.dropout = dropout
        self.char_embedding = nn.Embedding(261, char_embedding, padding_idx=0)
        self.char_convs = nn.ModuleList(nn.Conv1d(char_embedding, filters[i + 1], filters[i])
                                        for i in range(0, len(filters), 2))
        total = sum(filters[1::2])
        self.highway = Highway(total, highway_layers)
        self.projection = nn.Linear(total, projection_dim)
        lstm = lambda fwd: LstmWithProjection(projection_dim, projection_dim, cell_size, cell_clip, proj_clip, fwd)
        self.forward_layers = nn.ModuleList(lstm(True) for _ in range(num_layers))
        self.backward_layers = nn.ModuleList(lstm(False) for _ in range(num_layers))
        self.softmax = nn.Linear(projection_dim, vocab_size)
        self.scalar_mix = ScalarMix(num_layers + 1, mix_layer_norm)

    def token_embedding(self, chars):
        n, steps, width = chars.shape
        e = self.char_embedding(chars.reshape(n * steps, width)).transpose(1, 2)
        pooled = [F.relu(conv(e).max(-1)[0]) for conv in self.char_convs]
        x = self.projection(self.highway(torch.cat(pooled, 1)))
        mask = (chars != 0).any(-1)
        return (x * mask.reshape(n * steps, 1).to(x.dtype)).view(n, steps, -1), mask

    def run_lstms(self, x, mask):
        """In training mode each layer reads its input through dropout (bilm-tf's DropoutWrapper(input_keep_prob));
        the residual adds the input itself, not the dropped one (zoo's documented choice, docs/models/elmo.md;
        bilm-tf's wrapper order adds the dropped input)."""
        outs = []
        for stack in (self.forward_layers, self.backward_layers):
            inp, per_layer = x, []
            for k, layer in enumerate(stack):
                h = layer(F.dropout(inp, self.dropout, self.training), mask)
                if k > 0:
                    h = h + inp
                per_layer.append(h)
                inp = h
            outs.append(per_layer)
        return outs

    def lm_states(self, chars):
        """The top forward and backward states, for the language-model loss (dropout in training mode)."""
        fwd, bwd = self.run_lstms(*self.token_embedding(chars))
        return F.dropout(fwd[-1], self.dropout, self.training), F.dropout(bwd[-1], self.dropout, self.training)

    def forward(self, chars):
        x, mask = self.token_embedding(chars)
        layers = [torch.cat([x, x], -1)] + [torch.cat([f, b], -1) for f, b in zip(*self.run_lstms(x, mask))]
        return torch.stack(layers, 0)


# ---- attention, the gated LSTM cell -------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention, batch first: softmax(Q K^T / (sqrt(d) tau)) V per head, then out_proj."""

    def __init__(self, embed_dim, num_heads, temperature=1.0, bias=True, **_):
        super().__init__()
        self.h, self.temperature = num_heads, temperature
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(embed_dim, embed_dim, bias=bias)
                                                                for _ in range(4))

    def forward(self, query, key, value):
        n, l, e = query.shape
        heads = lambda x: x.view(n, x.shape[1], self.h, e // self.h).transpose(1, 2)
        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        weights = torch.softmax(q @ k.transpose(-2, -1) / (math.sqrt(e // self.h) * self.temperature), -1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(n, l, e)), weights


class LSTMCellTwin(nn.LSTMCell):
    """torch.nn.LSTMCell itself (weight_ih, weight_hh, bias_ih, bias_hh), called as (x, h, c) -> (h, c)."""

    def forward(self, x, h, c):
        return super().forward(x, (h, c))


class GatedLSTMCell(nn.Module):
    """The LSTM cell with its gates written out (zoo's GatedLSTMCell): the same parameters as torch.nn.LSTMCell."""

    def __init__(self, input_size, hidden_size, **_):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        for p in self.parameters():
            nn.init.uniform_(p, -1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size))

    def forward(self, x, h, c):
        i, f, g, o = (x @ self.weight_ih.t() + h @ self.weight_hh.t() + self.bias_ih + self.bias_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


# ---- resnet18/34/50: torchvision's own models, the independent reference -------------------------------------

def torchvision_resnet(depth, in_channels, num_classes, stem, zero_init_residual):
    """torchvision.models.resnetN, with the stem changed the way CIFAR code changes it (3x3/1 conv, no pool)."""
    import torchvision

    m = getattr(torchvision.models, "resnet%d" % depth)(num_classes=num_classes,
                                                         zero_init_residual=zero_init_residual)
    if stem == "cifar" or in_channels != 3:
        kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
        m.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, kernel // 2, bias=False)
    if stem == "cifar":
        m.maxpool = nn.Identity()
    return m


def load_weights(twin, path):
    """zoo's TorchScript weights file (model.pt, weights.pt) into the twin, name for name (strict): its parameters
    and buffers. Returns the twin."""
    archive = torch.jit.load(path)
    state = dict(archive.named_parameters())
    state.update(dict(archive.named_buffers()))
    twin.load_state_dict(state, strict=True)
    return twin


def build(name, o):
    if name == "attention":
        return Attention(**o)
    if name == "gated-lstm-cell":
        return LSTMCellTwin(o["input_size"], o["hidden_size"])
    if name == "gated-lstm-cell-explicit":
        return GatedLSTMCell(**o)
    if name == "moe-layer":
        return MixtureOfExperts(o["in_features"], o["out_features"], o["hidden"], o["experts"], o["gate"], o["k"],
                                o["renormalize"], o.get("gate_features", 0), o.get("capacity_factor", 0.0),
                                o.get("balance", "switch"), o.get("balance_coef", 1e-2), o.get("shared_hidden", 0),
                                o.get("noise_epsilon", 1e-2), o.get("eval_capacity_factor", 0.0))
    if name == "mlp":
        return MLP(o["in_features"], o["hidden"], o["num_classes"], o["dropout"])
    if name == "cnn":
        return CNN(o["in_channels"], o["image_size"], o["channels"], o["hidden"], o["num_classes"], o["dropout"])
    if name in ("conv1d", "conv3d", "conv4d"):
        return ConvNet(o["dims"], o["in_channels"], o["channels"], o["num_classes"])
    if name == "vae":
        return VAE(**o)
    if name in ("unet", "unet3d"):
        return UNet(**o)
    if name in ("deconvnet", "deconvnet3d"):
        return DeconvNet(**o)
    if name == "elmo":
        return Elmo(**o)
    if name == "moe":
        return MoEClassifier(**o)
    if name == "ode-resnet":
        return ODEResNet(**o)
    if name == "mhc-resnet":
        return MHCResNet(**o)
    if name == "mlp-field-solve":
        return ODEFuncSolve(**o)
    if name in ("resnet18", "resnet34", "resnet50"):
        return torchvision_resnet(**o)
    raise SystemExit("no Python twin for model '%s' yet" % name)
