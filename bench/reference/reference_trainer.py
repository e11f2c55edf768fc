#!/usr/bin/python3
"""Reference trainer: tern-trainer's model, quantizers and recipe in plain PyTorch.

A peer for tern-trainer (worker/trainer/), written independently from the same
definitions, to compare accuracy and images/s on the same budget:

- model: CIFAR ResNet-20/32/56 and ImageNet ResNet-18/34 exactly as worker/trainer/models.cc builds them
  (3x3 stem conv stride 1 without bias, BasicBlocks, 1x1 conv + BN shortcut when
  the shape changes, last BN of each block zero-initialized, kaiming-normal
  fan_out init of every conv, width multiplier rounded like std::lround);
- quantizers: FP, TWN, LAT and HLA (and HLA's two ablations) ported from
  quant/ternary_ops.cc and quant/ternary_model.cc (docs/METHOD.md): LAT
  projection with EMA second moments, re-scaled STE rho with beta, tau = kappa /
  mean|W|, geometric kappa annealing, clip and normalize, hyperspherical
  regularizer with a linear lambda ramp, FP forward during phase 1; the first
  conv and the classifier stay FP unless --all-ternary;
- recipe: SGD nesterov momentum 0.9, weight decay 5e-4 except on 1-D params,
  cosine LR per step, batches drop the incomplete last one, Fashion-MNIST from
  the Debian IDX files, zero-pad-4 random crop + horizontal flip, normalized by
  the training set's mean/std.

Run it with Debian's Python (torch 1.13 lives there):
  /usr/bin/python3 bench/reference/reference_trainer.py --method hla \
      --max-train 2048 --epochs 1 --threads 2 --json
On the GPU machine: --device cuda --bf16 [--channels-last] [--compile].

--world-size N (CPU) starts N processes that train data-parallel with
torch.distributed (gloo on 127.0.0.1) and DistributedDataParallel, in its
default configuration, as a PyTorch user would: rank r takes the contiguous
slice [r*B/N, (r+1)*B/N) of each global batch of B = --batch-size images (as
tern-trainer's ShardedSampler does), --threads is per rank, and rank 0 reports
images/s of the global batch.

Output: a log on stderr; with --json one JSON line on stdout with
images_per_second (training steps after --warmup-steps, evaluation excluded)
and the final test top-1 (ternary forward and FP twin) when evaluated.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

TINY = 1e-12  # quant/ternary_ops.cc kTiny


# ----------------------------------------------------------------------------- data

def read_idx(path):
    """IDX file (gzip or plain) -> numpy uint8 array of its dimensions."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims}, got {data.size} bytes")
    return data.reshape(dims)


def idx_file(root, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(os.path.join(root, stem) + "[.gz]")


def load_fashion_mnist(root, max_train, max_eval):
    """uint8 images [N, 1, 28, 28] and int64 labels, train and test."""
    def split(prefix, limit):
        images = read_idx(idx_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(idx_file(root, f"{prefix}-labels-idx1-ubyte"))
        if limit > 0:
            images, labels = images[:limit], labels[:limit]
        return (torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)))
    return split("train", max_train), split("t10k", max_eval)


SYNTHETIC_CLASSES = 1000


def synthetic_data(args, gen):
    """Random uint8 images [N, 3, S, S] and labels over 1000 classes (train, test)."""
    def split(n):
        x = torch.randint(0, 256, (n, 3, args.input_size, args.input_size), generator=gen,
                          dtype=torch.uint8)
        return x, torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=gen)
    return split(args.max_train or 2048), split(args.max_eval or 256)


def mean_std(images):
    """Per-channel mean and population std of pixel/255 (ComputeMeanStd)."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = (x.pow(2).mean(dim=(0, 2, 3)) - mean.pow(2)).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


def normalize(images_u8, mean, std):
    x = images_u8.float() / 255.0
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def augment(images_u8, pad, generator):
    """Zero-pad by `pad`, crop back at a random offset, flip with p = 1/2."""
    b, c, h, w = images_u8.shape
    dev = images_u8.device
    padded = F.pad(images_u8, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    rows = offsets[0][:, None] + torch.arange(h, device=dev)          # [b, h]
    cols = offsets[1][:, None] + torch.arange(w, device=dev)          # [b, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [b, h, w, c]
    # Not .contiguous(): with one channel it keeps the permuted strides (a size-1
    # dim counts as contiguous), and Debian's torch 1.13 conv backward corrupts
    # the heap on such an input at width 0.25 (double free / abort).
    return out.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------- model

class TernConv2d(nn.Conv2d):
    """Conv2d whose forward can take its weight from the quantizer."""
    qidx = -1  # position among the Conv2d/Linear layers (registration order)

    def forward(self, x, weights=None):
        w = self.weight if weights is None else weights[self.qidx]
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class TernLinear(nn.Linear):
    qidx = -1

    def forward(self, x, weights=None):
        w = self.weight if weights is None else weights[self.qidx]
        return F.linear(x, w, self.bias)


def conv(cin, cout, kernel, stride):
    return TernConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        # Registration order as in models.cc: conv1, bn1, conv2, bn2, shortcut.
        self.conv1 = conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_conv = None
        if stride != 1 or cin != planes:
            self.shortcut_conv = conv(cin, planes, 1, stride)
            self.shortcut_bn = nn.BatchNorm2d(planes)
        nn.init.zeros_(self.bn2.weight)  # blocks start as identities

    def forward(self, x, weights=None):
        y = F.relu(self.bn1(self.conv1(x, weights)))
        y = self.bn2(self.conv2(y, weights))
        identity = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x, weights))
        return F.relu(y + identity)


LAYOUTS = {  # arch -> (stage planes, blocks per stage, ImageNet stem); models.cc LayoutOf
    "resnet20": ((16, 32, 64), (3, 3, 3), False),
    "resnet32": ((16, 32, 64), (5, 5, 5), False),
    "resnet56": ((16, 32, 64), (9, 9, 9), False),
    "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2), True),
    "resnet34": ((64, 128, 256, 512), (3, 4, 6, 3), True),
}


class ResNet(nn.Module):
    """CIFAR-style ResNet-20/32/56 (3x3 stem) or ImageNet-style ResNet-18/34
    (7x7/2 stem + 3x3/2 max-pool), BasicBlocks, as models.cc builds them."""

    def __init__(self, arch, in_channels, num_classes, width_multiplier):
        super().__init__()
        stage_planes, stage_blocks, imagenet_stem = LAYOUTS[arch]

        def width(c):  # std::lround, at least 1
            return max(1, int(math.floor(c * width_multiplier + 0.5)))

        stem = width(64 if imagenet_stem else 16)
        self.imagenet_stem = imagenet_stem
        self.conv1 = conv(in_channels, stem, 7 if imagenet_stem else 3, 2 if imagenet_stem else 1)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, cin = [], stem
        for s, (planes, n) in enumerate(zip(stage_planes, stage_blocks)):
            planes = width(planes)
            for b in range(n):
                blocks.append(BasicBlock(cin, planes, 2 if (s > 0 and b == 0) else 1))
                cin = planes
        self.blocks = nn.ModuleList(blocks)
        self.fc = TernLinear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.0, mode="fan_out", nonlinearity="relu")
        for i, m in enumerate(self.quantizable()):
            m.qidx = i

    def quantizable(self):
        """Conv2d and Linear layers in registration order (first = stem, last = fc)."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def forward(self, x, weights=None):
        x = F.relu(self.bn1(self.conv1(x, weights)))
        if self.imagenet_stem:
            x = F.max_pool2d(x, 3, 2, 1)
        for block in self.blocks:
            x = block(x, weights)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x, weights)


def forward_flops_per_image(model, input_shape):
    """Multiply-adds x 2 of the Conv2d and Linear layers for one image of
    input_shape [C, H, W] (counted from the layers' output shapes on a CPU
    forward pass); BatchNorm, ReLU, pooling and the quantizer are left out, as
    usual for model FLOP counts. A training step costs about 3x this (the
    backward pass computes two products per layer)."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2 * output.numel() * (module.in_channels // module.groups) * k
        else:
            total[0] += 2 * output.numel() * module.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros((1,) + tuple(input_shape)))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total[0]


# ------------------------------------------------------------------------ quantizer

PRESETS = {  # method -> (projection, use_regularizer, use_rescale); quant/options.cc
    "fp": (None, False, False),
    "twn": ("twn", False, False),
    "lat": ("lat", False, False),
    "hla_no_regularizer": ("lat", False, True),
    "hla_no_rescale": ("lat", True, False),
    "hla": ("lat", True, True),
}


def rows_of(w, channel):
    return w.reshape(w.shape[0] if channel else 1, -1)


def masked_mean(values, weight, mask):
    return (values * weight * mask).sum(1) / (weight * mask).sum(1).clamp_min(TINY)


def finish(w, rows, delta, alpha):
    mask = rows.abs() > delta[:, None]
    codes = (rows.sign() * mask).reshape(w.shape).to(w.dtype)
    return codes, delta, alpha


@torch.no_grad()
def project_twn(w, channel, delta_factor):
    rows = rows_of(w.detach(), channel)
    a = rows.abs()
    delta = a.mean(1) * delta_factor
    mask = (a > delta[:, None]).to(a.dtype)
    alpha = masked_mean(a, torch.ones_like(a), mask)
    return finish(w, rows, delta, alpha)


@torch.no_grad()
def project_lat(w, importance, channel, iterations, delta_factor):
    rows = rows_of(w.detach(), channel)
    a = rows.abs()
    d = torch.ones_like(a) if importance is None else importance.reshape(a.shape).to(a.dtype)
    delta = a.mean(1) * delta_factor
    for _ in range(iterations):
        mask = (a > delta[:, None]).to(a.dtype)
        alpha = masked_mean(a, d, mask)
        delta = alpha / 2
    mask = (a > delta[:, None]).to(a.dtype)
    alpha = masked_mean(a, d, mask)
    return finish(w, rows, delta, alpha)


def dequantize(codes, alpha):
    units = alpha.numel()
    return (codes.reshape(units, -1) * alpha[:, None]).reshape(codes.shape)


@torch.no_grad()
def rescale_factor(w, delta, alpha, channel, rescale, beta, kappa, clip, normalize_rho):
    a = rows_of(w.detach(), channel).abs()
    inside = (a <= alpha[:, None] * clip).to(a.dtype)
    if not rescale:
        return inside.reshape(w.shape)
    tau = kappa / a.mean(1, keepdim=True).clamp_min(TINY)
    s = torch.sigmoid(tau * (a - delta[:, None]))
    rho = inside * ((1.0 - beta) + beta * 4.0 * s * (1.0 - s))
    if normalize_rho:
        rho = rho / rho.mean(1, keepdim=True).clamp_min(TINY)
    return rho.reshape(w.shape)


class StraightThrough(torch.autograd.Function):
    """Forward: w_hat. Backward: dL/dw = dL/dw_hat * rho."""

    @staticmethod
    def forward(ctx, w, w_hat, rho):
        ctx.save_for_backward(rho)
        return w_hat.clone()

    @staticmethod
    def backward(ctx, grad):
        (rho,) = ctx.saved_tensors
        return grad * rho, None, None


def unit_cosine(w, codes, channel):
    rw = rows_of(w, channel)
    rt = rows_of(codes.detach(), channel).to(w.dtype)
    dot = (rw * rt).sum(1)
    norms = rw.norm(dim=1) * rt.norm(dim=1)
    return torch.where(norms > TINY, dot / norms.clamp_min(TINY), torch.zeros_like(dot))


class Quantizer:
    """quant::TernaryModel in Python: schedules, forward weights, R(W), LAT moments."""

    def __init__(self, model, args):
        self.args = args
        self.projection, self.use_regularizer, self.use_rescale = PRESETS[args.method]
        self.quantized = args.method != "fp"
        self.reg_fraction = args.reg_fraction if self.use_regularizer else 0.0
        self.channel = args.granularity == "channel"
        self.layers = model.quantizable()
        n = len(self.layers)
        self.is_quantized = [self.quantized and not (i == 0 and not args.all_ternary)
                             and not (i == n - 1 and not args.all_ternary) for i in range(n)]
        self.moments = [torch.zeros_like(m.weight) if q and self.projection == "lat" else None
                        for m, q in zip(self.layers, self.is_quantized)]
        self.moment_steps = 0
        self.codes = [None] * n
        self.set_progress(0.0)

    def set_progress(self, progress):  # ComputeSchedule
        p = min(max(progress, 0.0), 1.0)
        a = self.args
        self.ternary_forward = self.quantized and p >= self.reg_fraction
        self.lam = 0.0
        if self.quantized and self.use_regularizer:
            ramp = min(1.0, p / a.reg_warmup_fraction) if a.reg_warmup_fraction > 0 else 1.0
            self.lam = a.lambda_max * ramp
        phase2 = 1.0 - self.reg_fraction
        q = min(max((p - self.reg_fraction) / phase2, 0.0), 1.0) if phase2 > 0 else 1.0
        self.kappa = a.kappa_start * (a.kappa_end / a.kappa_start) ** q

    def project(self, i):
        w = self.layers[i].weight
        a = self.args
        if self.projection == "twn":
            return project_twn(w, self.channel, a.twn_delta_factor)
        importance = None
        if self.moment_steps > 0:
            with torch.no_grad():
                correction = 1.0 - a.second_moment_decay ** self.moment_steps
                importance = (self.moments[i] / correction).sqrt() + a.lat_epsilon
        return project_lat(w, importance, self.channel, a.lat_iterations, a.twn_delta_factor)

    def forward_weights(self):
        """The weight each layer's forward uses now (BeforeForward)."""
        out = []
        grad = torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            w = layer.weight
            self.codes[i] = None
            if not self.is_quantized[i] or (not self.ternary_forward and not self.use_regularizer):
                out.append(w)
                continue
            codes, delta, alpha = self.project(i)
            self.codes[i] = codes
            if not self.ternary_forward:
                out.append(w)  # phase 1: FP forward, codes feed the regularizer
                continue
            w_hat = dequantize(codes, alpha)
            if not grad:
                out.append(w_hat)
                continue
            a = self.args
            rho = rescale_factor(w, delta, alpha, self.channel, self.use_rescale, a.beta,
                                 self.kappa, a.clip, not a.no_normalize)
            out.append(StraightThrough.apply(w, w_hat, rho))
        return out

    def regularization_loss(self):
        """lambda(t) * sum over quantized layers of 1 - mean unit cos(W, T)."""
        if not self.use_regularizer or self.lam == 0:
            return None
        total = None
        for layer, codes in zip(self.layers, self.codes):
            if codes is None:
                continue
            r = 1.0 - unit_cosine(layer.weight, codes, self.channel).mean()
            total = r if total is None else total + r
        return None if total is None else total * self.lam

    @torch.no_grad()
    def after_backward(self):
        if self.projection != "lat":
            return
        decay = self.args.second_moment_decay
        for layer, m in zip(self.layers, self.moments):
            if m is not None and layer.weight.grad is not None:
                m.mul_(decay).addcmul_(layer.weight.grad, layer.weight.grad, value=1.0 - decay)
        self.moment_steps += 1


# ------------------------------------------------------------------------- training

def make_optimizer(model, args):
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=args.lr, momentum=args.momentum, nesterov=True)


def learning_rate(args, step, total, steps_per_epoch):  # trainer.cc LearningRate, cosine
    warmup = args.warmup_epochs * steps_per_epoch
    if step < warmup:
        return args.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def autocast(args):
    if args.bf16:
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
    return torch.autocast(device_type=args.device, enabled=False)


@torch.no_grad()
def evaluate(forward, weights, images, labels, mean, std, args):
    correct, count = 0, 0
    for begin in range(0, images.shape[0], 512):
        x = normalize(images[begin:begin + 512], mean, std)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(args):
            logits = forward(x, weights)
        correct += (logits.float().argmax(1) == labels[begin:begin + 512]).sum().item()
        count += x.shape[0]
    return correct / max(1, count)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="hla", choices=sorted(PRESETS))
    p.add_argument("--arch", default="resnet20", choices=sorted(LAYOUTS))
    p.add_argument("--synthetic", action="store_true",
                   help="random 3 x input-size^2 images and 1000-class labels instead of Fashion-MNIST "
                        "(tern's DATASET_SYNTHETIC); --max-train images (default 2048), 256 test")
    p.add_argument("--input-size", type=int, default=224, help="side of --synthetic images")
    p.add_argument("--width-multiplier", type=float, default=1.0)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--max-train", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--max-eval", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    p.add_argument("--steps", type=int, default=0, help="stop after N steps (throughput runs)")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps excluded from images/s")
    p.add_argument("--no-eval", action="store_true", help="skip the final test evaluation")
    p.add_argument("--json", action="store_true", help="print one JSON result line on stdout")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (torch >= 2)")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode (reduce-overhead: CUDA graphs)")
    # Quantizer knobs (defaults of quant/options.h and HLA.md).
    p.add_argument("--granularity", default="tensor", choices=["tensor", "channel"])
    p.add_argument("--all-ternary", action="store_true", help="also ternarize first conv and fc")
    p.add_argument("--twn-delta-factor", type=float, default=0.7)
    p.add_argument("--lat-iterations", type=int, default=3)
    p.add_argument("--lat-epsilon", type=float, default=1e-8)
    p.add_argument("--second-moment-decay", type=float, default=0.999)
    p.add_argument("--lambda-max", type=float, default=1e-2)
    p.add_argument("--reg-warmup-fraction", type=float, default=0.1)
    p.add_argument("--reg-fraction", type=float, default=0.3)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument("--kappa-start", type=float, default=5.0)
    p.add_argument("--kappa-end", type=float, default=50.0)
    p.add_argument("--clip", type=float, default=2.0)
    p.add_argument("--world-size", type=int, default=1,
                   help="data-parallel processes (DDP over gloo, CPU); --threads is per rank")
    args = p.parse_args()
    if args.world_size < 1:
        p.error("--world-size must be >= 1")
    if args.world_size > 1:
        if args.device != "cpu":
            p.error("--world-size > 1 runs on the CPU (gloo) only")
        if args.batch_size % args.world_size != 0:
            p.error(f"--batch-size {args.batch_size} is not divisible by --world-size {args.world_size}")
    return args


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = parse_args()
    if args.world_size == 1:
        train(0, args, 1, None)
    else:
        mp.spawn(train, args=(args, args.world_size, free_port()), nprocs=args.world_size, join=True)


def train(rank, args, world_size, port):
    """One rank (the whole run when world_size == 1); rank 0 reports."""
    distributed = world_size > 1
    prefix = f"[reference {args.method}" + (f" rank {rank}/{world_size}]" if distributed else "]")

    def log(msg):
        print(f"{prefix} {msg}", file=sys.stderr, flush=True)

    if distributed:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world_size)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible")
    if args.bf16 and args.device == "cpu":
        log("note: --bf16 on CPU autocasts to bfloat16 as asked (slow on most CPUs)")
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # as tern-trainer does on CUDA
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    if args.synthetic:
        (train_x, train_y), (test_x, test_y) = synthetic_data(args, gen)
    else:
        (train_x, train_y), (test_x, test_y) = load_fashion_mnist(args.data, args.max_train, args.max_eval)
    mean, std = mean_std(train_x)
    train_x, train_y, test_x, test_y = (t.to(dev) for t in (train_x, train_y, test_x, test_y))
    mean, std = mean.to(dev), std.to(dev)
    num_classes = SYNTHETIC_CLASSES if args.synthetic else int(train_y.max().item()) + 1

    model = ResNet(args.arch, train_x.shape[1], num_classes, args.width_multiplier)
    flops = forward_flops_per_image(model, tuple(train_x.shape[1:]))
    model = model.to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    quant = Quantizer(model, args)
    optimizer = make_optimizer(model, args)
    forward = model
    if distributed:
        forward = DistributedDataParallel(model)  # broadcasts rank 0's weights
    if args.compile:
        if not hasattr(torch, "compile"):
            sys.exit("--compile needs torch >= 2")
        forward = torch.compile(model, mode=args.compile_mode)

    n = train_x.shape[0]
    steps_per_epoch = n // args.batch_size
    if steps_per_epoch < 1:
        sys.exit(f"--batch-size {args.batch_size} is larger than the training set ({n})")
    total_steps = steps_per_epoch * args.epochs
    run_steps = min(total_steps, args.steps) if args.steps > 0 else total_steps
    local_batch = args.batch_size // world_size
    # Every rank draws the same permutation from `gen`; augmentation draws
    # from its own generator per rank (one rank: `gen` itself, as before).
    aug_gen = gen if not distributed else torch.Generator().manual_seed(args.seed + 1 + rank)
    log(f"{args.arch} x{args.width_multiplier} on {n} images, {run_steps}/{total_steps} steps of "
        f"{args.batch_size}" + (f" ({local_batch} per rank)" if distributed else "") +
        f", torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}")

    model.train()
    step, timed_images, t0, start = 0, 0, None, time.perf_counter()
    loss_value = float("nan")
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for s in range(steps_per_epoch):
            if step >= run_steps:
                break
            if step == args.warmup_steps:
                sync(args.device)
                if distributed:
                    dist.barrier()
                t0 = time.perf_counter()
            begin = s * args.batch_size + rank * local_batch
            idx = perm[begin:begin + local_batch]
            images = train_x[idx]
            if not args.no_augment:
                images = augment(images, 4, aug_gen)
            x = normalize(images, mean, std)                      # [b, C, H, W]
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, step, total_steps, steps_per_epoch)
            quant.set_progress(step / total_steps)
            optimizer.zero_grad(set_to_none=True)
            weights = quant.forward_weights()
            with autocast(args):
                logits = forward(x, weights)                      # [b, classes]
            loss = F.cross_entropy(logits.float(), y)
            reg = quant.regularization_loss()
            (loss if reg is None else loss + reg).backward()
            quant.after_backward()
            optimizer.step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                sys.exit(f"loss is {loss_value} at step {step} (diverged)")
            step += 1
            if t0 is not None:
                timed_images += args.batch_size
            if step % 50 == 0 or step == run_steps:
                log(f"step {step}/{run_steps} epoch {epoch} loss {loss_value:.4f} "
                    f"phase {2 if quant.ternary_forward else 1} lambda {quant.lam:.4g}")
    sync(args.device)
    if distributed:
        dist.barrier()
    end = time.perf_counter()
    if rank != 0:
        dist.destroy_process_group()
        return
    ips = timed_images / (end - t0) if t0 is not None and timed_images > 0 else None
    result = {"method": args.method, "arch": args.arch, "width_multiplier": args.width_multiplier,
              "batch_size": args.batch_size, "world_size": world_size,
              "threads": torch.get_num_threads(),
              "device": args.device, "bf16": args.bf16, "torch": torch.__version__,
              "train_examples": n, "steps": step, "total_steps": total_steps,
              "warmup_steps": args.warmup_steps, "images_per_second": ips,
              "train_seconds": end - start, "final_loss": loss_value,
              "input_shape": list(train_x.shape[1:]), "forward_flops_per_image": flops}
    if args.device == "cuda":
        result["gpu_peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        result["gpu_name"] = torch.cuda.get_device_name()
    if not args.no_eval:
        model.eval()
        quant.set_progress(1.0)  # the final, ternary forward
        with torch.no_grad():
            ternary_weights = quant.forward_weights()
        evaluated = model if distributed else forward  # rank 0 alone: no collectives
        result["top1"] = evaluate(evaluated, ternary_weights, test_x, test_y, mean, std, args)
        result["fp_top1"] = evaluate(evaluated, None, test_x, test_y, mean, std, args)
        result["eval_examples"] = int(test_x.shape[0])
    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if args.json:
        print(json.dumps(result), flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
