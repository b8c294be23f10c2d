#!/usr/bin/env python3
"""Supernet training-step benchmark, the PyTorch side: the network that
`bench-supernet --layout` describes, built with torch.nn, trained with the
same path per step (same formula), SGD with Nesterov momentum, batch of
random data already on the device. Prints one JSON line like bench-supernet.

Usage: bench_supernet.py LAYOUT.json --mode supernet|standalone --device cpu|cuda
       [--batch 64] [--steps 50] [--warmup-steps 10] [--threads N]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class MbConv(nn.Module):
    def __init__(self, cin, cout, k, expand, stride):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBn(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBn(mid, mid, k, stride, mid)
        self.project = ConvBn(mid, cout, 1)

    def forward(self, x):
        if self.expand is not None:
            x = F.relu6(self.expand(x))
        return self.project(F.relu6(self.depthwise(x)))


class Supernet(nn.Module):
    def __init__(self, layout, only_path=None):
        super().__init__()
        s, f, h = layout["stem"], layout["first"], layout["head"]
        self.stem = ConvBn(s["cin"], s["cout"], s["kernel"], s["stride"])
        self.first = MbConv(f["cin"], f["cout"], f["kernel"], f["expand"], 1)
        self.first_shortcut = f["shortcut"]
        self.blocks = nn.ModuleList()
        self.shortcuts = []
        for b, block in enumerate(layout["blocks"]):
            cands = block["candidates"] if only_path is None else [block["candidates"][only_path[b]]]
            self.blocks.append(nn.ModuleList(
                [nn.Identity() if c is None else MbConv(block["cin"], block["cout"], c[0], c[1], block["stride"])
                 for c in cands]))
            self.shortcuts.append([block["shortcut"] and c is not None for c in cands])
        self.zero = [[c is None for c in (b["candidates"] if only_path is None else [b["candidates"][only_path[i]]])]
                     for i, b in enumerate(layout["blocks"])]
        self.head = ConvBn(h["cin"], h["cout"], 1)
        self.classifier = nn.Linear(h["cout"], layout["classes"])

    def forward(self, x, path):
        x = F.relu6(self.stem(x))
        y = self.first(x)
        x = y + x if self.first_shortcut else y
        for b, i in enumerate(path):
            if self.zero[b][i]:
                continue
            y = self.blocks[b][i](x)
            x = y + x if self.shortcuts[b][i] else y
        x = F.relu6(self.head(x))
        return self.classifier(x.mean((2, 3)))


def path(step, counts):
    return [(step * 7 + b * 3) % n for b, n in enumerate(counts)]


def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout")
    p.add_argument("--mode", default="supernet", choices=["supernet", "standalone"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    layout = json.load(open(a.layout))
    counts = [len(b["candidates"]) for b in layout["blocks"]]
    torch.manual_seed(0)
    device = torch.device(a.device)
    if a.mode == "supernet":
        net, paths = Supernet(layout), lambda step: path(step, counts)
    else:
        net, paths = Supernet(layout, only_path=path(0, counts)), lambda step: [0] * len(counts)
    net = net.to(device).train()
    decay = [p for n, p in net.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in net.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.01, momentum=0.9, nesterov=True)
    c, h, w = layout["input"]
    x = torch.randn(a.batch, c, h, w, device=device)
    y = torch.randint(layout["classes"], (a.batch,), device=device)

    def step(i):
        loss = F.cross_entropy(net(x, paths(i)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rss_before = rss_kb("VmRSS:")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for i in range(a.warmup_steps):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(a.warmup_steps + i)
    sync()
    step_ms = (time.perf_counter() - t0) * 1000 / a.steps
    out = {"side": "pytorch", "mode": a.mode, "device": str(device), "step_ms": step_ms,
           "params": sum(p.numel() for p in net.parameters()), "rss_before_kb": rss_before,
           "rss_peak_kb": rss_kb("VmHWM:")}
    if device.type == "cuda":
        out["cuda_peak_step_bytes"] = torch.cuda.max_memory_allocated() - base
    print(json.dumps(out))


if __name__ == "__main__":
    main()
