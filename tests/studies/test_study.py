"""studies/study.py: paired differences, spread and the method columns from run folders."""

import json

import pytest
import torch

from podkit.config import to_dict
from podkit.models import build_detector
from podkit.models.checkpoint import load_detector, save_checkpoint
from studies import study
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def own_ledger(tmp_path, monkeypatch):
    """Each test its own ledger, never the committed one."""
    monkeypatch.setattr(study, "LEDGER", tmp_path / "ledger")


def fake_run(folder, ap, aps, log):
    folder.mkdir(parents=True)
    metrics = dict.fromkeys(study.KEYS, 10.0) | {"AP": ap, "APs": aps}
    (folder / "eval.json").write_text(json.dumps(metrics))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def test_report_pairs_arms_by_seed_with_the_baseline_spread(tmp_path):
    plain = [{"iter": 10 * i, "time": 0.5, "small_loss_share": 0.1 * i} for i in (1, 2, 3)]
    fake_run(tmp_path / "frcnn_baseline/seed0", 30.0, 20.0, plain)
    fake_run(tmp_path / "frcnn_baseline/seed1", 31.0, 22.0, plain)
    dst = [dict(r, dst_collage=int(i == 0), dst_tau=0.2) for i, r in enumerate(plain)]
    fake_run(tmp_path / "frcnn_dst/seed0", 30.5, 23.0, dst)
    fake_run(tmp_path / "frcnn_dst/seed1", 32.0, 23.5, dst)
    text = study.report(["dst"], tmp_path, [0, 1])
    result = json.loads((tmp_path / "results.json").read_text())
    aps = result["studies"]["dst"]["frcnn_dst"]["APs"]
    assert aps["diffs"] == pytest.approx([3.0, 1.5]) and aps["mean"] == pytest.approx(2.25)
    assert aps["baseline_spread"] == pytest.approx(2.0)
    arm = result["arms"]["frcnn_dst"][0]
    assert arm["seed"] == 0
    assert arm["collage_fraction"] == pytest.approx(1 / 3) and arm["dst_tau"] == 0.2
    assert arm["small_loss_share"] == pytest.approx(0.2)
    assert "frcnn_multiscale" not in result["arms"] and "| frcnn_ms | -" in text
    # 2.25 rounds half to even; t(0.975, 1) = 12.706: two seeds give a wide interval
    assert "APs +2.2 [-7.3, +11.8] (+3.0, +1.5; spread 2.0)" in text
    assert aps["resolved"] is False
    # an arm with one seed missing is reported on the seed it has, paired on that seed
    (tmp_path / "frcnn_dst/seed1/eval.json").unlink()
    text = study.report(["dst"], tmp_path, [0, 1])
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in result["arms"]["frcnn_dst"]] == [0]
    assert result["studies"]["dst"]["frcnn_dst"]["APs"]["diffs"] == pytest.approx([3.0])
    assert "seeds [0] only" in text and "APs +3.0 [one seed] (+3.0; spread 2.0)" in text


def test_snip_study_pairs_each_test_with_its_baselines(tmp_path):
    """Every arm under the single-scale and the pyramid test; SNIP paired with the baseline
    and with multi-scale training on its pyramid."""
    log = [{"iter": 10, "time": 0.5}]
    for slug, ap, aps in (("frcnn_baseline", 30, 20), ("frcnn_pyramid_ms", 31, 21),
                          ("frcnn_snip", 32, 24)):  # fmt: skip
        for seed in (0, 1):
            fake_run(tmp_path / slug / f"seed{seed}", ap + seed, aps + seed, log)
            pyramid = dict.fromkeys(study.KEYS, 10.0) | {"AP": ap + 2 + seed, "APs": aps + 5}
            (tmp_path / slug / f"seed{seed}/eval_pyramid.json").write_text(json.dumps(pyramid))
    text = study.report(["snip"], tmp_path, [0, 1])
    result = json.loads((tmp_path / "results.json").read_text())["studies"]["snip"]
    assert result["frcnn_snip"]["APs"]["diffs"] == pytest.approx([4.0, 4.0])
    assert result["frcnn_snip vs frcnn_mst"]["AP"]["diffs"] == pytest.approx([1.0, 1.0])
    assert result["frcnn_snip@pyramid"]["AP"]["diffs"] == pytest.approx([2.0, 2.0])
    assert result["frcnn_snip@pyramid"]["AP"]["baseline_spread"] == pytest.approx(1.0)
    assert "| frcnn_ms@pyramid | -" in text and "frcnn_mst@pyramid vs frcnn@pyramid" in text


def test_augment_study_reports_the_train_val_gap(tmp_path):
    log = [{"iter": 10, "time": 0.5}]
    for slug, val, fit in (("tiny_sites", 20, 60), ("tiny_sites_aug", 30, 45)):
        for seed in (0, 1):
            fake_run(tmp_path / slug / f"seed{seed}", val + seed, 10.0, log)
            eval_json = tmp_path / slug / f"seed{seed}/eval.json"  # no large object: APl None
            eval_json.write_text(json.dumps(json.loads(eval_json.read_text()) | {"APl": None}))
            train_metrics = dict.fromkeys(study.KEYS, 50.0) | {"AP": fit + 2 * seed}
            (tmp_path / slug / f"seed{seed}/eval_train.json").write_text(json.dumps(train_metrics))
    text = study.report(["augment"], tmp_path, [0, 1])
    result = json.loads((tmp_path / "results.json").read_text())["studies"]["augment"]
    assert result["tiny_sites_aug"]["AP"]["diffs"] == pytest.approx([10.0, 10.0])
    assert result["tiny_sites gap"]["AP"] == pytest.approx([40.0, 41.0])
    assert result["tiny_sites_aug gap"]["AP"] == pytest.approx([15.0, 16.0])
    assert "tested on 200 of its training images" in text and "| tiny_synth | -" in text
    assert not any(
        ARM.from_start for ARM in (study.ARMS["tiny_sites"], study.ARMS["tiny_synth_aug"])
    )


def test_pod_fd_arms_start_from_the_gsl_plan(tmp_path, synth_set, monkeypatch):
    """FD: the GSL run's plan on the shared start's weights; FD-WT: on the GSL run's own.
    Both plans come from the GSL run's learned scales (saved with their plot)."""
    monkeypatch.setattr(study, "SCALE_IMAGES", 2)
    torch.manual_seed(0)
    runs = {}
    for name, extra in (("start", ()), ("c4_gsl/seed0", ("model.gsl=true",))):
        cfg = tiny_config(synth_set, "model.arch=faster_rcnn_c4", *extra)
        model = build_detector(cfg.model)
        runs[name] = tmp_path / name / "last.pt"
        save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg)}, runs[name])
    sources = {}
    for transfer in (False, True):
        run = tmp_path / f"fd_{transfer}" / "seed0"
        decompose = study.Decompose("c4_gsl", 1, transfer)
        init, plan_path = study.fd_start(decompose, 0, runs["start"], tmp_path, run, 8)
        plan = json.loads(plan_path.read_text())
        assert load_detector(init)[1].model.fd_plan == plan
        sources[transfer] = torch.load(init, weights_only=True)["source"]
    assert sources == {False: str(runs["start"]), True: str(runs["c4_gsl/seed0"])}
    assert (tmp_path / "c4_gsl/seed0/scales.json").exists()
    assert (tmp_path / "c4_gsl/seed0/scales.png").exists()
    summary = study.summarise_scales(tmp_path / "c4_gsl/seed0")
    assert set(summary) == {"layer2", "layer3", "res5"}  # layer4 is the C4 box head's res5


def test_fd_wt_arms_train_their_own_schedule(tmp_path, monkeypatch):
    """The paper's FD-WT trains the full schedule at the full lr after GSL; the short FD-WT
    a third of it at a tenth of the lr; FD the full schedule."""
    trained = {}

    def fake_fd_start(d, seed, start, out, run, iters):
        return run / "fd_init.pt", run / "plan.json"

    def fake_train(cfg, run, resume, overwrite):
        trained[run.parent.name] = (cfg.train.max_iter, cfg.train.lr, cfg.model.init_from)

    monkeypatch.setattr(study, "fd_start", fake_fd_start)
    monkeypatch.setattr(study, "train", fake_train)
    lr = study.recipe(study.C4, []).train.lr
    for name in ("c4_fd", "c4_fdwt_full", "c4_fdwt", "c4_fdwt_exact"):
        study.train_arm(study.ARMS[name], 0, tmp_path / "start.pt", tmp_path, 1200)
    assert trained["c4_fd"][:2] == (1200, lr)
    assert trained["c4_fdwt_full"][:2] == (1200, lr)
    for short in ("c4_fdwt", "c4_fdwt_exact"):
        assert trained[short][0] == 400 and trained[short][1] == pytest.approx(lr / 10)
    assert trained["c4_fdwt_full"][2] == str(tmp_path / "c4_fdwt_full/seed0/fd_init.pt")


def test_a_start_trained_again_has_the_same_fingerprint(tmp_path, synth_set):
    """The start of a study whose runs were lost is trained again in a later session; its
    weights' fingerprint says whether it is the same start (training is bit-exact here)."""
    from podkit.train.loop import train

    cfg = tiny_config(synth_set, "eval.max_images=1", max_iter=2)
    for folder in ("a", "b"):
        train(cfg, tmp_path / folder)
    first = study.weights_fingerprint(tmp_path / "a/last.pt")
    assert study.weights_fingerprint(tmp_path / "b/last.pt") == first
    ckpt = torch.load(tmp_path / "a/last.pt", weights_only=True)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = ckpt["model"][name] + 1e-6  # one weight moved: another start
    save_checkpoint(ckpt, tmp_path / "c.pt")
    assert study.weights_fingerprint(tmp_path / "c.pt") != first


def test_the_interval_on_scripted_differences():
    """mean +- t(0.975, n - 1) * sd / sqrt(n), with t from the textbook table."""
    mean, low, high = study.paired_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert mean == 2.0 and (low, high) == pytest.approx((2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5))
    diffs = [0.8, 1.1, 0.9, 1.4, 1.0]  # 5 seeds, all positive, little spread
    mean, low, high = study.paired_interval(diffs)
    assert low > 0 and high == pytest.approx(2 * mean - low)
    assert study.paired_interval([2.0]) == (2.0, None, None)
    assert study.t_975(4) == 2.776 and study.t_975(30) == 2.042
    assert study.t_975(60) == pytest.approx(2.000, abs=1e-3)  # the expansion past the table
    assert study.t_975(120) == pytest.approx(1.980, abs=1e-3)
    base = [{"AP": 30.0}] * 5
    arm = [{"AP": 30.0 + d} for d in diffs]
    assert study.paired(arm, base, "AP", base)["resolved"] is True
    flip = [{"AP": 30.0 + d} for d in (1.0, -0.5, 0.8, -0.2, 0.4)]
    assert study.paired(flip, base, "AP", base)["resolved"] is False
    # two seeds clear of 0 (+1.0, +1.1: [+0.4, +1.7]) are too few to call
    two = study.paired([{"AP": 31.0}, {"AP": 31.1}], base[:2], "AP", base)
    assert two["clear"] is True and two["resolved"] is False


def test_the_ledger_skips_recorded_arms_and_pairs_within_one_start(tmp_path):
    """Arms recorded from one start are reported without their run folders and skipped when
    the same start comes back; a seed whose arms came from two starts is not paired."""
    log = [{"iter": 10, "time": 0.5}]
    start = tmp_path / "start" / "last.pt"
    start.parent.mkdir()
    (start.parent / "fingerprint.txt").write_text("aaaa\n")
    for slug, arm in (("frcnn_baseline", "frcnn"), ("frcnn_dst", "frcnn_dst")):
        for seed, ap in ((0, 30.0), (1, 31.0), (2, 29.0)):
            run = tmp_path / "runs" / slug / f"seed{seed}"
            fake_run(run, ap + (seed + 1) * (slug == "frcnn_dst"), 20.0, log)
            study.record_arm(study.ARMS[arm], seed, run, start)
    dst = study.ARMS["frcnn_dst"]
    assert study.recorded(dst, 1, start, {"single"})
    assert not study.recorded(dst, 1, start, {"single", "pyramid"})  # a test it lacks
    assert not study.recorded(dst, 3, start, {"single"})
    other = tmp_path / "other" / "last.pt"
    other.parent.mkdir()
    (other.parent / "fingerprint.txt").write_text("bbbb\n")
    assert not study.recorded(dst, 1, other, {"single"})  # another start: train again
    # seed 2 of the DST arm trained again from the other start
    study.record_arm(dst, 2, tmp_path / "runs" / "frcnn_dst" / "seed2", other)
    study.report(["dst"], tmp_path / "gone", [0, 1, 2])  # no run folders there: the ledger
    result = json.loads((tmp_path / "gone" / "results.json").read_text())
    ap = result["studies"]["dst"]["frcnn_dst"]["AP"]
    assert result["studies"]["dst"]["frcnn_dst"]["seeds"] == [0, 1]
    assert ap["diffs"] == pytest.approx([1.0, 2.0])


def test_every_arm_is_a_recipe_that_loads():
    """Each arm's file extends a shipped recipe; an arm trained from the shared start has an
    architecture with a scale recipe, and a method arm differs from its baseline by methods."""
    for arm in study.ARMS.values():
        cfg = study.load_config(arm.config)
        if arm.from_start:
            assert study.load_config(f"scale/{cfg.model.arch}.yaml").model.arch == cfg.model.arch
    dsl, base = (study.load_config(study.ARMS[n].config) for n in ("frcnn_dsl", "frcnn"))
    assert dsl.methods == [{"name": "dynamic_rcnn", "assign": False}] and base.methods == []
    assert (dsl.model, dsl.data, dsl.train) == (base.model, base.data, base.train)
