#!/usr/bin/env python
"""Sweep of the learned start's search settings, in one process (how DEFAULT_SPREAD was chosen).

    python benchmarks/encoder_sweep.py FACES STEPS:LR:SPREAD ...   # SPREAD "rand" = PULSE's random start
    python benchmarks/encoder_sweep.py 8 50:1.5:1.2 50:1.5:0.5 50:1.5:rand 100:1.5:rand

Planted 16 px faces (z seeded 30000 + i: not the throughput benchmark's faces), n=4, seed 0,
mode faithful with start_pool 1; prints faces and candidates within eps, mean steps to eps of those,
candidate-steps run, and the mean pairwise RMS distance of the candidates' HR images in [0, 1].
Recorded on the shared 2-core machine (load ~10), 8 faces:
  50:1.5:0.5 7/8 19 cands 25.7 steps dist 0.0510 | 50:1.5:1.2 7/8 21 cands 27.6 steps dist 0.0588
  50:1.5:rand 5/8 10 cands 24.1 steps dist 0.0706 | 100:1.5:rand 8/8 24 cands 48.8 steps dist 0.0583
  30:1.5:0.5 5/8 14 cands 18.4 steps dist 0.0579 | 30:0.4:0.5 3/8 8 cands | 30:0.4:rand 1/8 4 cands
"""
import statistics, sys, time
import torch
torch.set_num_threads(1)
import pulse_sr.search.pulse as pulse
from pulse_sr.generators.dcgan import load_dcgan_digiface
from pulse_sr.degradations.bicubic import bicubic_downsample
from pulse_sr.search.encoder import encoder_start
from pulse_sr.search.settings import SearchSettings
G = load_dcgan_digiface()  # noqa: E402
faces = []
for i in range(int(sys.argv[1])):
    z = torch.randn((1, 1, 100), generator=torch.Generator().manual_seed(30000 + i))
    with torch.no_grad():
        hr = ((G.synthesis(z) + 1) / 2).clamp(0, 1)
    faces.append((bicubic_downsample(hr, 4)[0] * 255).round() / 255)
orig = pulse.initial_state
cur = {}
def patched(generator, settings, *, n, seed, device, gaussian_fit=None):
    st = orig(generator, settings, n=n, seed=seed, device=device, gaussian_fit=gaussian_fit)
    if cur["spread"] is not None:
        st.latent = encoder_start(generator, cur["t"], n=n, seed=seed, spread=cur["spread"])
    return st
pulse.initial_state = patched
for cfg in sys.argv[2:]:
    steps, lr, spread = cfg.split(":")
    cur["spread"] = None if spread == "rand" else float(spread)
    t0 = time.perf_counter(); fw = 0; conv = 0; cands = 0; st = []; dd = []
    for t in faces:
        cur["t"] = t
        r = pulse.pulse_search(G, t, n=4, seed=0, settings=SearchSettings(mode="faithful", start_pool=1, steps=int(steps), lr=float(lr)))
        c = r.converged
        conv += bool(c.any()); cands += int(c.sum()); st += r.best_step[c].tolist(); fw += int(r.steps.sum())
        h = r.hr.reshape(4, -1)
        dd.append(statistics.fmean(float(((h[i] - h[j]) ** 2).mean().sqrt()) for i in range(4) for j in range(i + 1, 4)))
    print(cfg, f"faces {conv}/{len(faces)} cands {cands} steps {statistics.fmean(st) if st else None:} cand-steps {fw} dist {statistics.fmean(dd):.4f} {time.perf_counter()-t0:.0f}s", flush=True)
