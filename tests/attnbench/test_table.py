"""The attention table end to end on a tiny random Wan pipeline, with stage-1/stage-2 weights written in the test,
against a direct full-size computation of one layer; chunking, best-mass mass and bad inputs."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sla2_train.attention import SLA2Attention
from sla2_train.attention import reference as ref
from sla2_train.attention.distill import LeastAbsoluteFit, hard_branches
from sla2_train.attnbench.calibration import RIDGES
from sla2_train.attnbench.chunks import BESTMASS, RouterMasks, walk
from sla2_train.attnbench.table import build, run_table
from sla2_train.attnbench.table_methods import ErrorSums, FittedAlpha, Method, SLAProjection, own_alpha, sparse_only
from sla2_train.attnbench.table_report import METHODS
from sla2_train.cli_errors import config_errors_as_one_line
from sla2_train.evaluation.pipeline import initial_noise, load_wan_pipeline, video_size
from sla2_train.export import export_checkpoint
from sla2_train.export.checkpoint_format import checkpoint_metadata
from sla2_train.export.loading import load_weights
from sla2_train.models import SLA2Swap, dense_capture, set_attention_mode, sla2_processors, token_count

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a cat runs on the grass", "a red car", "a dog runs slowly", "the red dog"]
CALIB = 2  # calib_count: the first two prompts fit α and SLA's W, the others are measured
SPARSITIES = [0.04, 0.5, 0.75]  # tiny model: 12 key blocks of 16 → k = 12 (all), 6, 3
STEPS, SAMPLING_STEPS, GUIDANCE = [0, 2], 3, 5.0
BLOCK_Q, BLOCK_K = 32, 16


def compose_table(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("attnbench_table", overrides=["model=tiny", *overrides])


def tiny_model(folder: Path, sparsity: float):
    cfg = compose_table(f"model.path={folder}", "prompts=x")
    model = instantiate(cfg.model.transformer)
    seq_len = token_count(model, cfg.model.latent_shape)
    SLA2Swap(sparsity=sparsity, block_q=BLOCK_Q, block_k=BLOCK_K).install(model, seq_len)
    return model


def write_checkpoint(folder: Path, path: Path, sparsity: float, seed: int, stage2: bool = False) -> Path:
    """A train.py-format checkpoint: a router unlike the heuristic (random proj_k), a random α; stage 2 also
    moves every transformer weight and records the low-bit branch."""
    model = tiny_model(folder, sparsity)
    g = torch.Generator().manual_seed(seed)
    dense = {id(p) for p in model.parameters()} - {id(p) for q in sla2_processors(model) for p in q.parameters()}
    with torch.no_grad():
        for proc in sla2_processors(model):
            proc.attention.router.proj_k.copy_(torch.randn(proc.attention.router.proj_k.shape, generator=g))
            proc.attention.alpha.logit.copy_(torch.randn(proc.attention.alpha.logit.shape, generator=g))
        if stage2:
            for p in model.parameters():
                if id(p) in dense:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            set_attention_mode(model, quant=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "sla2": checkpoint_metadata(model, "qat" if stage2 else "distill")}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    cfg = compose_table("+eval/random_model=tiny", "prompts=x")
    torch.manual_seed(0)
    folder = instantiate(cfg.eval.random_model).build(tmp / "models", cfg.model.transformer.arch, " ".join(PROMPTS))
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    s1 = write_checkpoint(folder, tmp / "s1-050.ckpt", 0.5, seed=1)
    s1_folder = export_checkpoint(write_checkpoint(folder, tmp / "s1-075.ckpt", 0.75, seed=2), tmp / "s1-075")
    s2 = write_checkpoint(folder, tmp / "s2-050.ckpt", 0.5, seed=3, stage2=True)
    s2b = write_checkpoint(folder, tmp / "s2b-050.ckpt", 0.5, seed=4, stage2=True)
    return {"tmp": tmp, "folder": folder, "prompts": tmp / "prompts.txt", "stage1": [s1, s1_folder], "stage2": s2,
            "stage2_other": s2b}


def table_overrides(files, out: Path, *extra: str) -> list[str]:
    return [f"model.path={files['folder']}", f"prompts={files['prompts']}", f"calib_count={CALIB}",
            f"stage1=[{files['stage1'][0]},{files['stage1'][1]}]", f"stage2={files['stage2']}",
            # Table 2's ablation rows: the same stage-2 weights again, and other ones
            f"+stage2_variants.again=[{files['stage2']}]", f"+stage2_variants.other=[{files['stage2_other']}]",
            f"sparsities=[{','.join(map(str, SPARSITIES))}]", f"steps=[{','.join(map(str, STEPS))}]",
            f"num_inference_steps={SAMPLING_STEPS}", f"guidance_scale={GUIDANCE}", f"out={out}", *extra]


@pytest.fixture(scope="module")
def table(files):
    out = files["tmp"] / "out"
    cfg = compose_table(*table_overrides(files, out, "query_chunk=64"))
    json_path, md_path = run_table(cfg, build(cfg), "python -m sla2_train.attnbench.table (test)")
    return json.loads(json_path.read_text()), md_path.read_text()


def rows_by(report) -> dict:
    return {(r["sparsity"], r["method"]): r for r in report["rows"]}


def test_the_command_writes_every_method_and_sparsity(table):
    report, md = table
    rows = rows_by(report)
    variants = {f"sla2_stage2:{n}" for n in ("again", "other")}
    assert set(rows) == {(s, m) for s in SPARSITIES for m in [*METHODS, *variants]}
    assert report["card"] and report["command"] and report["layers"] == [0, 1]
    for (s, m), r in rows.items():
        trained_here = {"sla2_stage1": (0.5, 0.75)}.get(m, (0.5,) if m.startswith("sla2_stage2") else SPARSITIES)
        if s in trained_here:
            assert all(e is not None and e >= 0 for e in r["per_layer"]), (s, m)
        else:
            assert r["mean"] is None, (s, m)
    for m in METHODS:
        assert METHODS[m] in md
    # the error table, the summary table and the breakdown by sampling step and guidance branch
    # and what each mask selects (sla's and sla2_untrained's mask is the heuristic's)
    assert md.count("| 0.50 |") == 3 * (len(METHODS) + 2) + len(METHODS)
    wheres = {(step, branch) for step in STEPS for branch in ("cond", "uncond")}  # two calls a step under guidance
    for r in rows.values():
        if r["mean"] is not None:
            assert {(g["step"], g["branch"]) for g in r["by_step_and_branch"]} == wheres, r["method"]
    assert "step 0 cond" in md and f"step {STEPS[-1]} uncond" in md
    assert "SLA2 stage 2 variant `other`" in md


def test_a_stage2_variant_is_measured_as_stage2_on_its_own_model(table):
    """The same weights as stage2 give the same row; other weights, other trajectories and other numbers."""
    rows = rows_by(table[0])
    main, again, other = (rows[(0.5, m)] for m in ("sla2_stage2", "sla2_stage2:again", "sla2_stage2:other"))
    for key in ("per_layer", "mask_sparse_per_layer", "gap_closed_per_layer"):
        assert again[key] == pytest.approx(main[key], rel=1e-9, abs=1e-12), key
    assert all(abs(a - b) > 1e-6 for a, b in zip(other["per_layer"], main["per_layer"]))
    assert table[0]["notes"]["stage2 variants"]["other"]


def test_with_every_block_selected_every_method_is_full_attention(table):
    rows = rows_by(table[0])
    for m in ("sparse_heuristic", "sla", "sla2_untrained", "bestmass"):
        assert max(rows[(0.04, m)]["per_layer"]) < 1e-5, m


def test_real_errors_and_a_loaded_router_that_differs_from_the_heuristic(table):
    rows = rows_by(table[0])
    for s in (0.5, 0.75):
        heuristic, learned = rows[(s, "sparse_heuristic")], rows[(s, "sla2_stage1")]
        assert min(heuristic["per_layer"]) > 1e-3  # sparse attention really drops something
        # the checkpoint's router chose other blocks: its mask's sparse-only error is not the heuristic's
        assert learned["mask_sparse_per_layer"] != pytest.approx(heuristic["mask_sparse_per_layer"], rel=1e-4)
        assert learned["per_layer"] != pytest.approx(rows[(s, "sla2_untrained")]["per_layer"], rel=1e-4)
        assert rows[(s, "bestmass")]["gap_closed"] in (1.0, None)
        assert rows[(s, "sparse_heuristic")]["gap_closed"] in (0.0, None)



def test_what_each_mask_selects(table):
    """Kept softmax mass and the shares of the selected blocks in the query's own frame and chosen by the heuristic:
    shares in [0, 1]; with every block selected, all the mass, a third of the blocks in the own frame (the tiny
    model's 3 latent frames of 63 tokens: 4 of the 12 key blocks of 16 have their middle token in each) and full
    overlap; the heuristic overlaps itself fully, the loaded router does not; best-mass keeps the most mass."""
    rows = rows_by(table[0])
    for r in rows.values():
        if r["mean"] is None:
            continue
        sel = r["selection"]
        assert 0 < sel["kept_mass"] <= 1 + 1e-6 and 0 <= sel["own_frame"] <= 1 and 0 <= sel["heuristic_overlap"] <= 1
        assert len(sel["per_layer"]) == 2 and all(g["selection"]["kept_mass"] for g in r["by_step_and_branch"])
        if r["sparsity"] == 0.04:
            assert sel["kept_mass"] == pytest.approx(1, abs=1e-5)
            assert sel["own_frame"] == pytest.approx(1 / 3) and sel["heuristic_overlap"] == pytest.approx(1)
    for s in (0.5, 0.75):
        assert rows[(s, "sparse_heuristic")]["selection"]["heuristic_overlap"] == pytest.approx(1)
        assert rows[(s, "sla2_stage1")]["selection"]["heuristic_overlap"] < 0.99
        best = [e["kept_mass"] for e in rows[(s, "bestmass")]["selection"]["per_layer"]]
        for m in ("sparse_heuristic", "sla2_stage1"):
            kept = [e["kept_mass"] for e in rows[(s, m)]["selection"]["per_layer"]]
            assert all(b >= k - 1e-6 for b, k in zip(best, kept)), (s, m, best, kept)
    assert "What each mask selects" in table[1]


def test_an_interrupted_table_resumes_from_its_finished_parts(files, tmp_path, monkeypatch):
    """A table killed during its last pass measures only that pass again, and writes the same numbers as a
    table measured from scratch; a weight file that changed has its pass measured again."""
    from sla2_train.attnbench import table_run

    passes = []
    capture = table_run.capture_trajectories

    def counted(*args, **kwargs):
        passes.append(args[7])  # the pass's name, as its progress bar shows it
        if "other" in args[7] and interrupt:
            raise KeyboardInterrupt
        return capture(*args, **kwargs)

    monkeypatch.setattr(table_run, "capture_trajectories", counted)
    out = tmp_path / "out"
    overrides = [o for o in table_overrides(files, out, "query_chunk=64") if not o.startswith("+stage2_variants.again")]
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")
    assert passes == ["calibration", "held-out", "stage 2 at 0.5", "stage 2 (other) at 0.5"]
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["base.safetensors", "stage2-0.5.safetensors"]

    interrupt, passes[:] = False, []
    resumed = json.loads(run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")[0].read_text())
    assert passes == ["calibration", "stage 2 (other) at 0.5"]  # α and W are refitted; the rest is kept

    passes[:] = []
    fresh = compose_table(*overrides[:-1], f"out={tmp_path / 'fresh'}", "resume=false")
    scratch = json.loads(run_table(fresh, build(fresh), "test")[0].read_text())
    assert passes == ["calibration", "held-out", "stage 2 at 0.5", "stage 2 (other) at 0.5"]
    assert rows_by(resumed).keys() == rows_by(scratch).keys()
    for key, row in rows_by(scratch).items():  # two loads of the same weights may round a CPU matmul apart
        assert rows_by(resumed)[key]["per_layer"] == pytest.approx(row["per_layer"], rel=1e-6, abs=1e-9), key

    # other stage-2 weights at the same path (a newer checkpoint): only their pass is measured again
    saved = files["stage2_other"].read_bytes()
    try:
        write_checkpoint(files["folder"], files["stage2_other"], 0.5, seed=5, stage2=True)
        passes[:] = []
        run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")
        assert passes == ["calibration", "stage 2 (other) at 0.5"]
    finally:
        files["stage2_other"].write_bytes(saved)
    passes[:] = []
    run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")
    assert passes == ["calibration", "stage 2 (other) at 0.5"]  # and back

    # a damaged part file costs its pass only
    (out / "parts" / "base.safetensors").write_bytes(b"not a safetensors file")
    passes[:] = []
    run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")
    assert passes == ["calibration", "held-out"]

    # the prompts file written again with the same text (as a script re-run does): everything is kept
    prompts = files["prompts"].read_text()
    files["prompts"].write_text(prompts)
    passes[:] = []
    run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")
    assert passes == ["calibration"]
    # ... with other text: every pass is measured again
    try:
        files["prompts"].write_text(prompts.replace("a red car", "a blue car"))
        passes[:] = []
        run_table(compose_table(*overrides), build(compose_table(*overrides)), "test")
        assert passes == ["calibration", "held-out", "stage 2 at 0.5", "stage 2 (other) at 0.5"]
    finally:
        files["prompts"].write_text(prompts)


# --- the per-layer numbers against a direct computation of one layer, at full size --------------------------------

LAYER, SPARSITY = 1, 0.5


def captured(model, folder: Path, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) [C, H, N, D] of LAYER at the measured steps of every prompt's dense trajectory, concatenated."""
    cfg = compose_table(f"model.path={folder}", "prompts=x")
    model.eval()
    pipe = load_wan_pipeline(folder, model, instantiate(cfg.eval.scheduler), torch.float32, "cpu")
    kept, count = [], [0]

    def hook(module, args, output):
        if count[0] % (2 * SAMPLING_STEPS) // 2 in STEPS:  # two transformer calls per step under guidance
            kept.append(tuple(t.transpose(1, 2).float().clone() for t in procs[0].captured))
        count[0] += 1

    with torch.no_grad(), dense_capture(model, [LAYER]) as procs:
        handle = model.register_forward_hook(hook)
        for prompt in prompts:
            pipe(prompt=prompt, negative_prompt="", latents=initial_noise(cfg.model.latent_shape, 0, "cpu"),
                 num_inference_steps=SAMPLING_STEPS, guidance_scale=GUIDANCE, max_sequence_length=16,
                 output_type="latent", **video_size(pipe, cfg.model.latent_shape))
        handle.remove()
    assert count[0] == 2 * SAMPLING_STEPS * len(prompts) and len(kept) == 2 * len(STEPS) * len(prompts)
    return tuple(torch.cat([c[i] for c in kept]) for i in range(3))


def ridge_fit(x: torch.Tensor, t: torch.Tensor, ridge: float) -> torch.Tensor:
    """min ‖t − xW‖² + λ‖W‖², λ = ridge · tr(xᵀx)/D, by least squares on x stacked over √λ·I; x, t [rows, D]."""
    if ridge == float("inf"):
        return torch.zeros(x.shape[-1], t.shape[-1], dtype=x.dtype)
    d = x.shape[-1]
    lam = ridge * (x ** 2).sum() / d
    a, b = torch.cat([x, lam.sqrt() * torch.eye(d, dtype=x.dtype)]), torch.cat([t, t.new_zeros(d, t.shape[-1])])
    return torch.linalg.lstsq(a, b).solution


def sla_projection(o_l: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SLA's W per head [H, D, D] from calibration outputs [C, H, N, D] (C: the prompts' captures, in prompt
    order): λ by leaving one calibration prompt out, the squared error summed directly, then fitted on all."""
    calls, d = o_l.shape[0] // CALIB, o_l.shape[-1]
    ws = []
    for h in range(o_l.shape[1]):
        xs = [o_l[i * calls:(i + 1) * calls, h].reshape(-1, d) for i in range(CALIB)]
        ts = [target[i * calls:(i + 1) * calls, h].reshape(-1, d) for i in range(CALIB)]

        def left_out_error(r: float) -> float:
            err = 0.0
            for i in range(CALIB):
                w = ridge_fit(torch.cat(xs[:i] + xs[i + 1:]), torch.cat(ts[:i] + ts[i + 1:]), r)
                err += float(((ts[i] - xs[i] @ w) ** 2).sum())
            return err
        ws.append(ridge_fit(torch.cat(xs), torch.cat(ts), min(RIDGES, key=left_out_error)))
    return torch.stack(ws)


def rel_l1(o, full) -> float:
    return float((o.double() - full).abs().sum() / full.abs().sum())


def masks(q, k, k_sel):
    eye = torch.eye(q.shape[-1], dtype=q.dtype).expand(q.shape[1], -1, -1)
    identity = ref.hard_topk(ref.router_scores(q, k, eye, eye, BLOCK_Q, BLOCK_K), k_sel).mask
    mass = ref.pooled_block_mass(torch.softmax(ref.scaled_scores(q, k), dim=-1), BLOCK_Q, BLOCK_K)
    return identity, ref.hard_topk(mass, k_sel).mask


@torch.no_grad()
def test_per_layer_numbers_equal_a_direct_computation(files, table):
    rows = rows_by(table[0])
    base = tiny_model(files["folder"], SPARSITY)
    load_weights(base, files["stage1"][0], key="stage1")
    learned = sla2_processors(base)[LAYER].attention
    qc, kc, vc = (t.double() for t in captured(base, files["folder"], PROMPTS[:CALIB]))
    q32, k32, v32 = captured(base, files["folder"], PROMPTS[CALIB:])
    q, k, v = q32.double(), k32.double(), v32.double()
    k_sel = ref.topk_count(ref.num_blocks(q.shape[-2], BLOCK_K), SPARSITY)

    # fitted on the calibration trajectories: α by the recipe's fit, SLA's W by ridge regression
    fit = LeastAbsoluteFit()
    id_c, best_c = masks(qc, kc, k_sel)
    alpha_id = fit.fit_mask(qc, kc, vc, id_c, BLOCK_Q, BLOCK_K, per_head=True)[:, 0]
    alpha_best = fit.fit_mask(qc, kc, vc, best_c, BLOCK_Q, BLOCK_K, per_head=True)[:, 0]
    o_s, o_l = hard_branches(qc, kc, vc, id_c, BLOCK_Q, BLOCK_K)
    w = sla_projection(o_l, ref.full_attention(qc, kc, vc) - o_s)

    full = ref.full_attention(q, k, v)
    identity, best = masks(q, k, k_sel)
    expected = {
        "sparse_heuristic": ref.sparse_attention(q, k, v, identity, BLOCK_Q, BLOCK_K)[0],
        "sla": ref.sla_attention(q, k, v, identity, w, BLOCK_Q, BLOCK_K),
        "sla2_untrained": ref.sla2_attention(q, k, v, identity, alpha_id[None, :, None], BLOCK_Q, BLOCK_K),
        "bestmass": ref.sla2_attention(q, k, v, best, alpha_best[None, :, None], BLOCK_Q, BLOCK_K),
        "sla2_stage1": learned(q32, k32, v32, layout="bhnd"),  # the module's own hard Top-k forward
    }
    for method, o in expected.items():
        assert rows[(SPARSITY, method)]["per_layer"][LAYER] == pytest.approx(rel_l1(o, full), rel=1e-3), method
        # each sampling step and guidance branch alone: captures are in prompt, step, branch order
        wheres = [(step, branch) for step in STEPS for branch in ("cond", "uncond")]
        for j, group in enumerate(rows[(SPARSITY, method)]["by_step_and_branch"]):
            assert (group["step"], group["branch"]) == wheres[j]
            picked = torch.arange(j, q.shape[0], len(wheres))
            assert group["per_layer"][LAYER] == pytest.approx(rel_l1(o[picked], full[picked]), rel=1e-3), (
                method, wheres[j])

    # stage 2: its own trajectories, its router and α, the low-bit sparse branch
    tuned = tiny_model(files["folder"], SPARSITY)
    load_weights(tuned, files["stage2"], key="stage2")
    attn = sla2_processors(tuned)[LAYER].attention
    q2, k2, v2 = captured(tuned, files["folder"], PROMPTS[CALIB:])
    attn.quant = True
    o2 = attn(q2, k2, v2, layout="bhnd")
    assert rows[(SPARSITY, "sla2_stage2")]["per_layer"][LAYER] == pytest.approx(
        rel_l1(o2, ref.full_attention(q2.double(), k2.double(), v2.double())), rel=2e-3)


# --- chunking and the best-mass property ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [77, 100, 130])
@torch.no_grad()
def test_error_sums_do_not_depend_on_the_query_chunk(n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) * 2 for _ in range(3))
    trained = SLA2Attention(2, 8, sparsity=0.6, block_q=16, block_k=8)
    trained.router.proj_k.data = torch.randn(2, 8, 8, generator=g)
    trained.alpha.logit.data = torch.randn(2, generator=g)
    routers = {"identity": RouterMasks(SLA2Attention(2, 8, block_q=16, block_k=8), False),
               "trained": RouterMasks(trained, True)}
    methods = {0.6: [Method("sparse", "identity", sparse_only),
                     Method("sla", "identity", SLAProjection(torch.randn(2, 8, 8, generator=g) * 0.1)),
                     Method("fitted", BESTMASS, FittedAlpha(torch.rand(2, generator=g))),
                     Method("own", "trained", own_alpha),
                     Method("low-bit", "trained", own_alpha, quant=True)]}
    measured = {0.6: ["identity", "trained", BESTMASS]}
    results = []
    for rows in (16, 48, 4096):
        sums = ErrorSums()
        for chunk in walk(q, k, v, 16, 8, measured, routers, query_chunk=rows):
            sums.add(0, chunk, methods, (0, "cond"))
        results.append({m.name: sums.rel_l1(0.6, m.name, 0) for m in methods[0.6]})
    assert results[0] == pytest.approx(results[2], rel=1e-5) and results[1] == pytest.approx(results[2], rel=1e-5)
    mask = ref.hard_topk(trained._scores(q, k), ref.topk_count(ref.num_blocks(n, 8), 0.6)).mask
    o = ref.sla2_attention(q, k, v, mask, trained.alpha(None), 16, 8)
    assert results[2]["own"] == pytest.approx(rel_l1(o, ref.full_attention(q, k, v).double()), rel=1e-5)


@torch.no_grad()
def test_bestmass_keeps_at_least_the_heuristic_mass_in_every_query_block(files):
    model = tiny_model(files["folder"], SPARSITY)
    q, k, v = captured(model, files["folder"], PROMPTS[CALIB:CALIB + 1])
    attn1 = model.blocks[0].attn1
    routers = {"identity": RouterMasks(SLA2Attention(attn1.heads, q.shape[-1], block_q=BLOCK_Q, block_k=BLOCK_K),
                                       False)}
    measured = {s: ["identity", BESTMASS] for s in (0.5, 0.75, 0.9)}
    strictly_more = False
    for chunk in walk(q, k, v, BLOCK_Q, BLOCK_K, measured, routers, query_chunk=64):
        t = chunk.teacher
        kept = {}
        for b in chunk.items:
            tok = ref.expand_block_mask(b.mask, t.q.shape[-2], t.k.shape[-2], BLOCK_Q, BLOCK_K)
            kept[(b.sparsity, b.name)] = ref.mean_pool((t.probs * tok).sum(-1, keepdim=True), BLOCK_Q)[..., 0]
        for s in measured:
            assert (kept[(s, BESTMASS)] >= kept[(s, "identity")] - 1e-6).all(), s
            strictly_more |= bool((kept[(s, BESTMASS)] > kept[(s, "identity")] + 1e-4).any())
    assert strictly_more  # the heuristic is not already the best-mass selection on these captures


# --- bad input: one line naming the key --------------------------------------------------------------------------


def one_line_error(capsys, *overrides) -> str:
    cfg = compose_table(*overrides)
    capsys.readouterr()  # what earlier steps printed
    with pytest.raises(SystemExit) as exit_info, config_errors_as_one_line(cfg):
        build(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line_naming_the_key(files, capsys, tmp_path):
    good = table_overrides(files, tmp_path / "out")
    replace = lambda key, value: [o for o in good if not o.startswith(key + "=")] + [f"{key}={value}"]  # noqa: E731
    err = one_line_error(capsys, *replace("model.path", tmp_path / "nowhere"))
    assert "model.path" in err and "does not exist" in err
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    err = one_line_error(capsys, *replace("prompts", tmp_path / "empty.txt"))
    assert "prompts" in err and "holds no prompts" in err
    err = one_line_error(capsys, *replace("stage1", tmp_path / "missing.ckpt"))
    assert err.startswith("error: stage1") and "missing.ckpt" in err
    err = one_line_error(capsys, *replace("stage1", files["stage2"]))  # a stage-2 checkpoint given as stage 1
    assert "stage1" in err and "changed" in err
    err = one_line_error(capsys, *good, f"+stage2_variants.bad-name=[{files['stage2']}]")
    assert "stage2_variants.bad-name" in err and "identifier" in err
    err = one_line_error(capsys, *good, f"+stage2_variants.twice=[{files['stage2']},{files['stage2_other']}]")
    assert err.startswith("error: stage2_variants.twice") and "two checkpoints for sparsity 0.5" in err
    err = one_line_error(capsys, *good, "resume=maybe")
    assert err.startswith("error: resume") and "maybe" in err
    err = one_line_error(capsys, *replace("sparsities", "[0.9]"))
    assert "stage1" in err and "not in sparsities" in err
    # a checkpoint of another architecture (three blocks, not two)
    other = compose_table("+eval/random_model=tiny", "prompts=x", "model.transformer.arch.num_layers=3")
    folder3 = instantiate(other.eval.random_model).build(tmp_path / "models", other.model.transformer.arch)
    model3 = instantiate(other.model.transformer, path=str(folder3))
    SLA2Swap(sparsity=0.5, block_q=BLOCK_Q, block_k=BLOCK_K).install(model3, None)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model3.state_dict().items()},
                "sla2": checkpoint_metadata(model3, "distill")}, tmp_path / "three.ckpt")
    err = one_line_error(capsys, *replace("stage1", tmp_path / "three.ckpt"))
    assert "stage1" in err and "another architecture" in err and "num_layers" in err


def test_the_command_line_reports_a_bad_folder_in_one_line(tmp_path, files):
    import subprocess
    import sys

    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "sla2_train.attnbench.table", "model=tiny", f"model.path={tmp_path / 'nowhere'}",
         f"prompts={files['prompts']}", f"out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().startswith("error: model.path") and "does not exist" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists()  # nothing written for a run that never started


def test_parts_stamp_small_files_by_content_and_large_ones_by_size_and_time(tmp_path):
    from sla2_train.attnbench.table_parts import HASHED_BELOW, weight_stamp

    small, large = tmp_path / "prompts.txt", tmp_path / "weights.bin"
    small.write_text("a red car\n")
    large.write_bytes(b"\0" * HASHED_BELOW)
    stamp = weight_stamp(str(tmp_path))
    assert [len(s) for s in stamp] == [2, 3]  # sorted: prompts.txt [path, sha256], weights.bin [path, size, mtime]
    small.write_text("a red car\n")  # the same text again: the same stamp
    assert weight_stamp(str(small)) == stamp[:1]
    small.write_text("a blue car\n")
    assert weight_stamp(str(small)) != stamp[:1]
