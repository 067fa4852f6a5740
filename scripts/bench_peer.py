#!/usr/bin/env python3
"""Peer benchmark: medlabel-runner (Rust + libtorch) against PyTorch + MONAI on the same
machine, model and image.

Both sides use MONAI Label's spleen network (UNet 16-32-64-128-256, strides 2, two
residual units, batch norm) with the *same weights*: this script builds the MONAI model,
saves its state_dict, and the runner loads it, so `check_max_abs_diff` also proves the
two networks compute the same function. Timed on both sides:

- forward_96: one 96^3 window, no grad, eval mode (mean over --repeat after a warm-up);
- e2e: a size^3 NIfTI file through load -> RAS -> spacing 1.5x1.5x2 -> CT window ->
  sliding window (96^3, overlap 0.25, gaussian, sw_batch_size 1) -> softmax -> back to the
  original grid -> argmax -> write .nii.gz (MONAI: its transforms + sliding_window_inference
  + Invertd + SaveImage);
- train_step: batch x 1 x 96^3, DiceCELoss + AdamW step.

Usage: OMP_NUM_THREADS=2 python scripts/bench_peer.py --runner target/release/medlabel-runner
The image is generated with `medlabel-runner make-sample` (synthetic CT, 1x1x1.5 mm).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


SYNC = None  # set to torch.cuda.synchronize on CUDA, so timings include the GPU work


def timed(fn):
    t = time.perf_counter()
    out = fn()
    if SYNC:
        SYNC()
    return out, time.perf_counter() - t


def summary(times):
    return {"mean_s": sum(times) / len(times), "min_s": min(times), "runs": times}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", required=True, help="path to the built medlabel-runner binary")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides; AMP on CUDA)")
    ap.add_argument("--out", help="write the combined JSON report here")
    args = ap.parse_args()

    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import (
        Activationsd, AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged,
        Orientationd, SaveImage, ScaleIntensityRanged, Spacingd,
    )

    global SYNC
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        SYNC = torch.cuda.synchronize
    # MONAI Label runs CUDA inference under autocast; the runner uses AMP on CUDA too.
    amp = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    work = tempfile.mkdtemp(prefix="bench_peer_")
    subprocess.run([args.runner, "make-sample", "--out", work, "--cases", "1", "--seed", "7",
                    "--dims", f"{args.size},{args.size},{args.size}", "--spacing", "1,1,1.5"],
                   check=True, stdout=subprocess.DEVNULL)
    image = os.path.join(work, "spleen_000.nii.gz")

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2, norm="batch").eval()
    params = sum(p.numel() for p in net.parameters())
    weights = os.path.join(work, "weights.pt")
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    x_check = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        y_check = net(x_check)
    check = os.path.join(work, "check.pt")
    torch.save({"input": x_check, "output": y_check}, check)

    monai = {"device": args.device, "threads": torch.get_num_threads(), "parameters": params}
    net = net.to(dev)
    x = torch.randn(1, 1, 96, 96, 96, device=dev)
    times = []
    with torch.no_grad(), amp():
        for i in range(args.repeat + 1):
            _, t = timed(lambda: net(x))
            if i > 0:
                times.append(t)
    monai["forward_96"] = summary(times)

    if not args.skip_e2e:
        pre = Compose([
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(1.5, 1.5, 2.0), mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        ])
        post_act = Activationsd(keys="pred", softmax=True)
        invert = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)
        argmax = AsDiscreted(keys="pred", argmax=True)
        writer = SaveImage(output_dir=work, output_postfix="mask", output_dtype="uint8",
                           separate_folder=False, print_log=False, resample=False)
        runs = []
        for _ in range(min(args.repeat, 2)):
            lat = {}
            t0 = time.perf_counter()
            d, lat["pre"] = timed(lambda: pre({"image": image}))
            with torch.no_grad(), amp():
                pred, lat["infer"] = timed(lambda: sliding_window_inference(
                    d["image"][None].to(dev), roi_size=(96, 96, 96), sw_batch_size=1, predictor=net,
                    overlap=0.25, mode="gaussian", sigma_scale=0.125)[0].float().cpu())
            d["pred"] = pred
            d, t_act = timed(lambda: post_act(d))
            d, lat["invert"] = timed(lambda: invert(d))
            lat["invert"] += t_act
            d, lat["post"] = timed(lambda: argmax(d))
            _, lat["write"] = timed(lambda: writer(d["pred"].to(torch.uint8)))
            lat["total"] = time.perf_counter() - t0
            runs.append(lat)
        monai["e2e"] = {"size": args.size, "summary": summary([r["total"] for r in runs]), "latencies": runs}

    train_net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                     strides=(2, 2, 2, 2), num_res_units=2, norm="batch").train().to(dev)
    opt = torch.optim.AdamW(train_net.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    xb = torch.randn(args.batch, 1, 96, 96, 96, device=dev)
    yb = torch.randint(0, 2, (args.batch, 1, 96, 96, 96), device=dev)

    def step():
        opt.zero_grad()
        loss = loss_fn(train_net(xb), yb)
        loss.backward()
        opt.step()

    times = []
    for i in range(args.repeat + 1):
        _, t = timed(step)
        if i > 0:
            times.append(t)
    monai["train_step"] = {"batch": args.batch, "summary": summary(times)}

    cmd = [args.runner, "bench", "--device", args.device, "--size", str(args.size), "--repeat", str(args.repeat),
           "--batch", str(args.batch), "--weights", weights, "--check", check, "--image", image]
    if args.skip_e2e:
        cmd.append("--skip-e2e")
    rust = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    def ratio(key):
        r, m = rust.get(key), monai.get(key)
        if not r or not m:
            return None
        r = r.get("summary", r)
        m = m.get("summary", m)
        return m["mean_s"] / r["mean_s"]

    report = {"monai": monai, "medlabel_runner": rust,
              "speedup_monai_over_runner": {k: ratio(k) for k in ("forward_96", "e2e", "train_step")}}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    for k, v in report["speedup_monai_over_runner"].items():
        if v is not None:
            print(f"{k:>12}: MONAI/runner time ratio {v:.2f}", file=sys.stderr)
    print(f"weights check max |diff| = {rust.get('check_max_abs_diff')}", file=sys.stderr)


if __name__ == "__main__":
    main()
