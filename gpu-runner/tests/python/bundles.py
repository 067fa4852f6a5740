#!/usr/bin/env python3
"""Test tooling for the runner's MONAI bundle support: builds small MONAI bundles with
MONAI itself and runs MONAI's own bundle inference on them, so the Rust tests can check
that an imported bundle segments like MONAI does. Python is test tooling only.

Commands (each prints one JSON line on stdout):

  make  OUT --network {unet,segresnet,dynunet} --format {pt,ts} [--seed N] [--bench]
        Writes a bundle folder OUT (configs/metadata.json, configs/inference.json,
        models/model.pt or models/model.ts) and a synthetic image OUT/image.nii.gz.
        Weights are seeded and trained for a few steps to threshold the bright "organ"
        of the phantom, so masks are not trivial. --bench makes the larger networks the
        benchmark uses (and skips training).
  suite OUT
        `make` and `infer` for every network in both formats, in one process:
        OUT/<network>_<format>/ holds each bundle, its image and MONAI's outputs (monai/).
  phantom OUT.nii.gz --size I J K --spacing X Y Z [--seed N]
        Writes a phantom image (for extra test or benchmark images).
  infer BUNDLE IMAGE OUTDIR
        Runs the bundle with monai.bundle.ConfigWorkflow (its evaluator, handlers and
        postprocessing) and writes OUTDIR/monai_labels.nii.gz (uint8 labels on the input
        grid) and OUTDIR/monai_probs.npy (the inverted probabilities, [C, i, j, k]),
        the second from a run with the discretisation disabled.
  bench BUNDLE IMAGE --repeat N
        Times MONAI's inference of the bundle on IMAGE (load → preprocessing → sliding
        window → postprocessing, no writing), median of N runs after a warm-up.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import torch

ROI = {"unet": [32, 32, 32], "segresnet": [32, 32, 32], "dynunet": [32, 32, 16]}


def phantom(shape, spacing, seed):
    """CT-like phantom: air, a body ellipse of soft tissue and a bright ellipsoidal organ
    off-centre, with noise. The affine flips x (an LPS-like first axis) so orientation
    matters."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    x, y, z = grid
    img = np.full(shape, -1000.0)
    img[(x / 0.9) ** 2 + (y / 0.8) ** 2 <= 1] = 40.0
    cx, cy, cz = rng.uniform(-0.3, 0.3, 3)
    rx, ry, rz = rng.uniform(0.25, 0.4, 3)
    organ = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1
    img[organ] = 130.0
    img += rng.normal(0, 12, shape)
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [shape[0] * spacing[0] / 2, -shape[1] * spacing[1] / 2, -shape[2] * spacing[2] / 2]
    return nib.Nifti1Image(img.astype(np.int16), affine)


def network_def(name, fmt, bench):
    if name == "unet":
        ch = [16, 32, 64, 128, 256] if bench else [4, 8, 16]
        return {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                "channels": ch, "strides": [2] * (len(ch) - 1), "num_res_units": 2, "norm": "batch"}
    if name == "segresnet":
        return {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                "init_filters": 8 if bench else 4, "blocks_down": [1, 2, 2, 4] if bench else [1, 1, 1],
                "blocks_up": [1, 1, 1] if bench else [1, 1], "dropout_prob": 0.2,
                "norm": ["GROUP", {"num_groups": 8 if bench else 4}],
                **({} if bench else {"upsample_mode": "deconv"})}
    filters = [16, 32, 64, 128] if bench else [4, 8, 16]
    kernels = [[3, 3, 3]] * len(filters) if bench else [[3, 3, 1], 3, 3]
    strides = [1, 2, 2, 2] if bench else [1, [2, 2, 1], 2]
    return {"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
            "kernel_size": kernels, "strides": strides, "upsample_kernel_size": strides[1:],
            "filters": filters, "norm_name": "instance" if bench else ["INSTANCE", {"affine": True}],
            # MONAI 1.6.1 cannot script DynUNet's deep-supervision heads; the state-dict
            # bundle keeps them so their weights are in model.pt.
            "res_block": True, "deep_supervision": not bench and fmt == "pt", "deep_supr_num": 1}


def preprocessing(name, bench):
    load = [{"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"}]
    pix = [1.5, 1.5, 2.0] if bench else [2.0, 2.0, 2.5]
    spacing = {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"}
    window = {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164,
              "b_min": 0.0, "b_max": 1.0, "clip": True}
    if name == "unet" or bench:
        steps = load + [spacing, window, {"_target_": "EnsureTyped", "keys": "@image_key"}]
    elif name == "segresnet":
        steps = load + [spacing, {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
                        {"_target_": "CropForegroundd", "keys": "@image_key", "source_key": "@image_key",
                         "margin": 2, "k_divisible": [8, 8, 8], "allow_smaller": True}]
    else:
        steps = load + [spacing, window,
                        {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
                        {"_target_": "CopyItemsd", "keys": "@image_key", "names": "image_copy"},
                        {"_target_": "DeleteItemsd", "keys": "image_copy"}]
    return {"_target_": "Compose", "transforms": steps}, pix


def inferer(name, bench):
    inf = {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96] if bench else ROI[name],
           "sw_batch_size": 4 if bench else 2, "overlap": 0.25 if bench else 0.5}
    if name == "segresnet" and not bench:
        inf.update({"mode": "gaussian", "sigma_scale": 0.125})
    if name == "dynunet" and not bench:
        inf.update({"mode": "gaussian", "padding_mode": "replicate"})
    return inf


def postprocessing(name, bench):
    act = {"_target_": "Activationsd", "keys": "pred", "softmax": True}
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
              "orig_keys": "@image_key", "nearest_interp": False, "to_tensor": True}
    argmax = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    save = {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
            "output_postfix": "seg", "output_dtype": "$numpy.uint8", "separate_folder": False,
            "resample": False, "print_log": False}
    if name == "dynunet" and not bench:
        steps = [act, argmax, dict(invert, nearest_interp=True), save]
    else:
        steps = [act, invert, argmax, save]
    return {"_target_": "Compose", "transforms": steps}


def inference_json(name, fmt, bench):
    pre, pix = preprocessing(name, bench)
    load = ("$torch.jit.load(@bundle_root + '/models/model.ts').to(@device)" if fmt == "ts"
            else "$@network_def.to(@device)")
    cfg = {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(@bundle_root + '/image.nii.gz')))",
        "device": "$torch.device('cpu')",
        "pixdim": pix,
        "network_def": network_def(name, fmt, bench),
        "network": load,
        "preprocessing": pre,
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                       "shuffle": False, "num_workers": 0},
        "inferer": inferer(name, bench),
        "postprocessing": postprocessing(name, bench),
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                      "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }
    if fmt == "pt":
        cfg["checkpointloader"] = {"_target_": "CheckpointLoader",
                                   "load_path": "$@bundle_root + '/models/model.pt'",
                                   "load_dict": {"model": "@network"}, "map_location": "cpu"}
        cfg["initialize"].append("$@checkpointloader(@evaluator)")
    return cfg


def metadata(name):
    return {
        "version": "0.1.0", "monai_version": "1.6.1", "name": f"test {name}",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1,
                                 "spatial_shape": ["16*n", "16*n", "16*n"] if name != "dynunet" else ["4*n", "4*n", "2*n"]}},
            "outputs": {"pred": {"type": "image", "num_channels": 2,
                                 "channel_def": {"0": "background", "1": "Organ"}}},
        },
    }


def train_briefly(net, bundle, image_path, seed, steps=60):
    """Fits the network to threshold its own preprocessed input (the organ is the
    brightest tissue), on random windows, so the masks it gives are not trivial."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    parser["bundle_root"] = bundle
    pre = parser.get_parsed_content("preprocessing")
    roi = parser["inferer"]["roi_size"]
    img = pre({"image": image_path})["image"].as_tensor()[None].float()
    flat = img.flatten()
    threshold = torch.quantile(flat[::max(1, flat.numel() // 100000)], 0.93)
    target = (img > threshold).long()[:, 0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        starts = [int(torch.randint(0, max(1, s - r + 1), (1,), generator=gen)) for s, r in zip(img.shape[2:], roi)]
        sl = tuple(slice(st, st + r) for st, r in zip(starts, roi))
        x = img[(slice(None), slice(None)) + sl]
        y = target[(slice(None),) + sl]
        if x.shape[2:] != tuple(roi):
            continue
        out = net(x)
        if out.dim() == 6:  # deep supervision
            out = out[:, 0]
        loss = torch.nn.functional.cross_entropy(out, y, weight=torch.tensor([1.0, 4.0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return float(loss.detach())


def make(args):
    from monai.bundle import ConfigParser

    out = args.out
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    cfg = inference_json(args.network, args.format, args.bench)
    with open(os.path.join(out, "configs", "inference.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "configs", "metadata.json"), "w") as f:
        json.dump(metadata(args.network), f, indent=2)
    shape, spacing = ((256, 256, 256), (1.0, 1.0, 1.5)) if args.bench else ((52, 44, 30), (1.4, 1.7, 3.0))
    image = os.path.join(out, "image.nii.gz")
    nib.save(phantom(shape, spacing, args.seed), image)

    torch.manual_seed(args.seed)
    parser = ConfigParser()
    parser.read_config(os.path.join(out, "configs", "inference.json"))
    net = parser.get_parsed_content("network_def")
    loss = None if args.bench else train_briefly(net, out, image, args.seed)
    net.eval()
    if args.format == "pt":
        torch.save(net.state_dict(), os.path.join(out, "models", "model.pt"))
    else:
        torch.jit.save(torch.jit.script(net), os.path.join(out, "models", "model.ts"))
    print(json.dumps({"ok": True, "bundle": out, "image": image, "loss": loss}))


def run_workflow(bundle, image, outdir, overrides):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=os.path.join(bundle, "configs", "inference.json"),
        meta_file=os.path.join(bundle, "configs", "metadata.json"),
        workflow_type="infer",
        bundle_root=bundle,
        datalist=[image],
        output_dir=outdir,
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    name = os.path.basename(image).split(".")[0]
    return os.path.join(outdir, f"{name}_seg.nii.gz")


def discretisation_index(bundle):
    with open(os.path.join(bundle, "configs", "inference.json")) as f:
        steps = json.load(f)["postprocessing"]["transforms"]
    return next(i for i, s in enumerate(steps) if s["_target_"] == "AsDiscreted"), steps


def infer(args):
    torch.set_num_threads(1)
    os.makedirs(args.outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        labels = run_workflow(args.bundle, args.image, os.path.join(tmp, "labels"), {})
        img = nib.load(labels)
        data = np.asarray(img.dataobj).astype(np.uint8).squeeze()
        nib.save(nib.Nifti1Image(data, nib.load(args.image).affine), os.path.join(args.outdir, "monai_labels.nii.gz"))
        # Probabilities: the same run with everything from the discretisation on disabled
        # except the writer, which then saves the activated, inverted channels.
        index, steps = discretisation_index(args.bundle)
        overrides = {f"postprocessing#transforms#{i}#_disabled_": True
                     for i, s in enumerate(steps) if i >= index and s["_target_"] != "SaveImaged"}
        overrides.update({f"postprocessing#transforms#{i}#output_dtype": "$numpy.float32"
                          for i, s in enumerate(steps) if s["_target_"] == "SaveImaged"})
        inverted = any(s["_target_"] == "Invertd" for s in steps[:index])
        probs = None
        if inverted:
            probs_file = run_workflow(args.bundle, args.image, os.path.join(tmp, "probs"), overrides)
            p = np.asarray(nib.load(probs_file).dataobj).astype(np.float32)
            # SaveImage writes channel-last: (i, j, k, 1, C) or (i, j, k, C).
            p = p.reshape(p.shape[:3] + (-1,))
            probs = np.moveaxis(p, -1, 0)
            np.save(os.path.join(args.outdir, "monai_probs.npy"), np.ascontiguousarray(probs))
    print(json.dumps({"ok": True, "labels_fg": int((data > 0).sum()), "voxels": int(data.size),
                      "probs": probs is not None}))


def bench(args):
    """MONAI's inference path as MONAI Label runs a bundle, without writing the result."""
    from monai.bundle import ConfigParser

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser = ConfigParser()
    parser.read_config(os.path.join(args.bundle, "configs", "inference.json"))
    parser["bundle_root"] = args.bundle
    parser["postprocessing"]["transforms"] = [t for t in parser["postprocessing"]["transforms"]
                                              if t["_target_"] != "SaveImaged"]
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    inf = parser.get_parsed_content("inferer")
    if os.path.exists(os.path.join(args.bundle, "models", "model.ts")):
        net = torch.jit.load(os.path.join(args.bundle, "models", "model.ts"))
    else:
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(os.path.join(args.bundle, "models", "model.pt"), weights_only=True))
    net.eval()
    times = []
    for i in range(args.repeat + 1):
        t = time.perf_counter()
        d = pre({"image": args.image})
        with torch.no_grad():
            d["pred"] = inf(d["image"][None], net)[0]
        d = post(d)
        dt = time.perf_counter() - t
        if i > 0:
            times.append(dt)
    print(json.dumps({"ok": True, "median_s": statistics.median(times), "runs": times,
                      "threads": torch.get_num_threads()}))


def suite(args):
    done = []
    for network in ["unet", "segresnet", "dynunet"]:
        for fmt in ["pt", "ts"]:
            out = os.path.join(args.out, f"{network}_{fmt}")
            make(argparse.Namespace(out=out, network=network, format=fmt, seed=1, bench=False))
            infer(argparse.Namespace(bundle=out, image=os.path.join(out, "image.nii.gz"),
                                     outdir=os.path.join(out, "monai")))
            done.append(out)
    print(json.dumps({"ok": True, "bundles": done}))


def write_phantom(args):
    nib.save(phantom(tuple(args.size), tuple(args.spacing), args.seed), args.out)
    print(json.dumps({"ok": True, "image": args.out}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--network", required=True, choices=["unet", "segresnet", "dynunet"])
    m.add_argument("--format", required=True, choices=["pt", "ts"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--bench", action="store_true")
    s = sub.add_parser("suite")
    s.add_argument("out")
    p = sub.add_parser("phantom")
    p.add_argument("out")
    p.add_argument("--size", type=int, nargs=3, required=True)
    p.add_argument("--spacing", type=float, nargs=3, required=True)
    p.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("infer")
    i.add_argument("bundle")
    i.add_argument("image")
    i.add_argument("outdir")
    b = sub.add_parser("bench")
    b.add_argument("bundle")
    b.add_argument("image")
    b.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"make": make, "suite": suite, "phantom": write_phantom, "infer": infer, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
