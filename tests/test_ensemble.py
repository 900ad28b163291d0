"""Ensembles of saved models (fer_app.ensemble, fer_app.encoders.ensemble): one model whose logits are the
mean of its members' logits, or one network whose weights are the mean of theirs (a weight soup), saved,
loaded, checked and used like any other."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from fer_app.config import CLASSES
from fer_app.encoders.compact import CompactEncoder
from fer_app.ensemble import average, combine, member, save_ensemble
from fer_app.heads import Head
from fer_app.model import Classifier, ModelError, load_model, save_model


def _member(seed: int, widths=(8, 16), mean: float = 0.5, head: str = "linear") -> Classifier:
    torch.manual_seed(seed)
    enc = CompactEncoder(widths, (1, 1), mean=mean)
    return Classifier(enc, Head(enc.embed_dim, len(CLASSES), head), name=f"m{seed}", tta_flip=True).eval()


def _crops(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (48 + 7 * i, 44 + 5 * i), dtype=np.uint8) for i in range(n)]


def test_ensemble_logits_are_the_mean_of_the_members_logits():
    members = [_member(0), _member(1, widths=(12, 24))]  # other shapes may join: only preprocessing is shared
    ensemble = combine(members, name="ens")
    pixels = members[0].encoder.preprocess(_crops())
    with torch.inference_mode():
        expected = torch.stack([m(pixels) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(pixels), expected, atol=1e-5, rtol=1e-5)
    assert ensemble.encoder.embed_dim == 16 + 24
    probs = ensemble.predict_proba(_crops())  # with the members' TTA (the face and its mirror image)
    assert probs.shape == (5, 7) and ensemble.tta_flip
    assert not np.allclose(probs, members[0].predict_proba(_crops()), atol=1e-3)


def test_saved_ensemble_loads_and_predicts_as_combined(models_dir):
    for seed in (0, 1, 2):
        save_model(_member(seed), f"m{seed}", models_dir=models_dir)
    folder = save_ensemble(["m0", "m1", "m2"], "ens", models_dir=models_dir)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["encoder"]["type"] == "ensemble" and len(cfg["encoder"]["members"]) == 3
    assert [m["name"] for m in cfg["ensemble"]["members"]] == ["m0", "m1", "m2"]
    loaded = load_model("ens", models_dir=models_dir)  # runtime auto: torch, the ensemble's only candidate
    from fer_app.runtimes import runtime_choice

    assert runtime_choice(loaded.encoder).runtime == "torch"
    direct = combine([load_model(f"m{s}", models_dir=models_dir, runtime="torch") for s in (0, 1, 2)])
    np.testing.assert_allclose(loaded.predict_proba(_crops()), direct.predict_proba(_crops()), atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "## Members" in card and "| m2 |" in card and "python -m fer_app ensemble ens m0 m1 m2" in card
    assert "`ensemble` of 3 compact nets" in card


def test_members_that_cannot_be_combined_are_refused_by_name(models_dir):
    with pytest.raises(ModelError, match="at least 2"):
        combine([_member(0)])
    with pytest.raises(ModelError, match="m1: ensemble members must be compact models with a linear head"):
        combine([_member(0), _member(1, head="mlp")])
    with pytest.raises(ModelError, match="preprocesses differently"):
        combine([_member(0), _member(1, mean=0.4)])
    save_model(_member(0), "m0", models_dir=models_dir)
    with pytest.raises(ModelError, match="no model 'missing'"):
        save_ensemble(["m0", "missing"], "ens", models_dir=models_dir)
    assert not (models_dir / "ens").exists()


def test_malformed_ensemble_config_is_named(models_dir):
    save_model(_member(0), "m0", models_dir=models_dir)
    save_model(_member(1), "m1", models_dir=models_dir)
    folder = save_ensemble(["m0", "m1"], "ens", models_dir=models_dir)
    cfg = json.loads((folder / "config.json").read_text())
    for members, match in ((["x"], "'members' must be a list of 2 to 16"),
                           ([{"type": "clip-vit-b32"}] * 2, "members must be compact"),
                           ([cfg["encoder"]["members"][0], {**cfg["encoder"]["members"][1], "std": 0.3}],
                            "must share input_size, mean, std")):
        bad = dict(cfg, encoder={"type": "ensemble", "members": members})
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ModelError, match=match) as err:
            load_model("ens", models_dir=models_dir)
        assert str(folder / "config.json") in str(err.value)


def test_ensemble_teaches_a_student(models_dir, tiny_splits):
    """An ensemble is a model like any other: `--teacher` distils from it."""
    from fer_app.training import TrainConfig, train
    from conftest import TINY_COMPACT

    for seed in (0, 1):
        save_model(_member(seed), f"m{seed}", models_dir=models_dir)
    save_ensemble(["m0", "m1"], "ens", models_dir=models_dir)
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 1}, teachers=(str(models_dir / "ens"),), kd_weight=0.5)
    result = train(cfg, tiny_splits, name="student", workdir=models_dir.parent / "run")
    assert load_model("student", models_dir=models_dir).predict_proba(_crops(2)).shape == (2, 7)
    assert list(result.saved_to.parent.glob("student"))


def _train_members(models_dir, tiny_splits) -> None:
    """Two tiny trained models, t0 and t1 (seeds 0 and 1), recorded as made by `python -m fer_app train T0` / `T1`."""
    from fer_app.training import TrainConfig, train
    from conftest import TINY_COMPACT

    for seed in (0, 1):
        train(TrainConfig(**{**TINY_COMPACT, "epochs": 1, "seed": seed}), tiny_splits, name=f"t{seed}",
              workdir=models_dir.parent / f"t{seed}", extra_meta={"command": f"python -m fer_app train T{seed}"})


def _reproduce_block(folder) -> list[str]:
    """The lines of a model card's Reproduce block."""
    return (folder / "README.md").read_text().split("## Reproduce\n```\n")[1].split("```")[0].splitlines()


def test_ensemble_card_lists_every_members_command(models_dir, tiny_splits):
    """The card's Reproduce block: each member's training command (the last member's too), then the ensemble's."""
    _train_members(models_dir, tiny_splits)
    folder = save_ensemble(["t0", "t1"], "ens", models_dir=models_dir, command="python -m fer_app ensemble ens t0 t1")
    assert _reproduce_block(folder) == ["python -m fer_app train T0", "python -m fer_app train T1",
                                        "python -m fer_app ensemble ens t0 t1"]


def test_a_soup_inside_an_ensemble_keeps_its_step_in_the_card(models_dir, tiny_splits):
    """A member that is itself an ensemble (a weight soup): its ensemble command comes before the outer one."""
    _train_members(models_dir, tiny_splits)
    save_ensemble(["t0", "t1"], "soup", mean="weights", models_dir=models_dir, command="python -m fer_app ensemble S")
    folder = save_ensemble(["soup", "t1"], "ens", models_dir=models_dir, command="python -m fer_app ensemble E")
    assert _reproduce_block(folder) == ["python -m fer_app train T0", "python -m fer_app train T1",
                                        "python -m fer_app ensemble S", "python -m fer_app ensemble E"]


def test_cli_ensemble(capsys, models_dir):
    from fer_app.cli import main

    for seed in (0, 1):
        save_model(_member(seed), f"m{seed}", models_dir=models_dir)
    assert main(["ensemble", "ens", "m0", "m1", "--models-dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 members" in out and "python -m fer_app tta ens" in out
    assert main(["ensemble", "ens", "m0", "m1", "--models-dir", str(models_dir)]) == 1  # exists: one-line error
    assert "exists" in capsys.readouterr().err
    assert main(["ensemble", "soup", "m0", "m1", "--mean", "weights", "--models-dir", str(models_dir)]) == 0
    assert "2 members, the mean of their weights" in capsys.readouterr().out
    assert main(["ensemble", "ens", "m0", "m1", "--models-dir", str(models_dir), "--overwrite"]) == 0
    steps = json.loads((models_dir / "ens" / "config.json").read_text())["ensemble"]["steps"]
    assert steps == [f"python -m fer_app ensemble ens m0 m1 --models-dir {models_dir}"]  # a fresh start: no --overwrite
    assert json.loads((models_dir / "soup" / "config.json").read_text())["encoder"]["type"] == "compact"


def _trained(member: Classifier, seed: int) -> Classifier:
    """`member` after a few SGD steps on random faces: its weights and BatchNorm statistics moved."""
    torch.manual_seed(seed)
    model = copy.deepcopy(member).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(8, 1, 48, 48)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_soup_of_copies_of_one_model_is_that_model():
    member = _trained(_member(0), 1)
    soup = average([member, copy.deepcopy(member), copy.deepcopy(member)], name="soup")
    assert soup.name == "soup" and soup.meta == {} and soup.tta_flip
    pixels = member.encoder.preprocess(_crops())
    with torch.inference_mode():
        torch.testing.assert_close(soup(pixels), member(pixels), atol=1e-6, rtol=1e-6)


def test_soup_weights_and_batchnorm_statistics_are_the_members_mean():
    base = _member(0)
    a, b = _trained(base, 1), _trained(base, 2)  # one lineage: both moved from `base`
    soup = average([a, b])
    sa, sb, ss = a.state_dict(), b.state_dict(), soup.state_dict()
    assert any("running_mean" in k for k in ss)
    for k, v in ss.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sa[k] + sb[k]) / 2)
        else:
            assert torch.equal(v, sa[k])  # BatchNorm's batch counter: the first member's
    moved = [k for k in sa if sa[k].is_floating_point() and not torch.equal(sa[k], sb[k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)
    with pytest.raises(ModelError, match="at least 2"):
        average([a])
    with pytest.raises(ModelError, match="m1: a weight average needs members of one shape"):
        average([a, _member(1, widths=(12, 24))])


def test_saved_soup_loads_as_averaged_with_the_compute_of_one(models_dir):
    base = _member(0)
    for seed in (1, 2):
        m = _trained(base, seed)
        m.name = f"m{seed}"
        save_model(m, f"m{seed}", models_dir=models_dir)
    folder = save_ensemble(["m1", "m2"], "soup", mean="weights", models_dir=models_dir)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["encoder"]["type"] == "compact" and cfg["encoder"]["widths"] == [8, 16]  # one network
    assert cfg["ensemble"]["combine"].startswith("mean of the members' weights")
    assert [m["name"] for m in cfg["ensemble"]["members"]] == ["m1", "m2"]
    loaded = load_model("soup", models_dir=models_dir, runtime="torch")
    direct = average([load_model(f"m{s}", models_dir=models_dir, runtime="torch") for s in (1, 2)])
    np.testing.assert_allclose(loaded.predict_proba(_crops()), direct.predict_proba(_crops()), atol=1e-6)
    card = (folder / "README.md").read_text()
    assert "## Members" in card and "Uniform weight average of 2" in card
    assert "python -m fer_app ensemble soup m1 m2 --mean weights" in card
    with pytest.raises(ValueError, match="mean must be one of"):
        save_ensemble(["m1", "m2"], "other", mean="median", models_dir=models_dir)


def test_photos_default_to_the_stills_model_when_it_is_there(capsys, models_dir, monkeypatch):
    import fer_app.model as model_module
    from fer_app.config import DEFAULT_MODEL

    monkeypatch.setattr(model_module, "STILLS_MODEL", "ens")
    assert model_module.stills_model() == DEFAULT_MODEL  # not in models/: the bundled default
    for seed in (0, 1):
        save_model(_member(seed), f"m{seed}", models_dir=models_dir)
    save_ensemble(["m0", "m1"], "ens", models_dir=models_dir)
    assert model_module.stills_model() == "ens"
    from fer_app.cli import main
    from fer_app.config import PROJECT_ROOT

    assert main(["predict", str(PROJECT_ROOT / "assets" / "astronaut.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "ens"


def test_a_member_comes_back_out_of_an_ensemble_exactly():
    members = [_member(0), _member(1, widths=(12, 24)), _member(2)]
    with torch.no_grad():  # distinct biases: the ensemble keeps only their mean
        for i, m in enumerate(members):
            m.head.net[-1].bias.copy_(torch.arange(7.0) * (i + 1) - 2 * i)
    ensemble = combine(members, name="ens")
    pixels = members[0].encoder.preprocess(_crops())
    for index in range(3):
        others = [m for i, m in enumerate(members) if i != index]
        back = member(ensemble, index, others, name="back")
        with torch.inference_mode():
            torch.testing.assert_close(back(pixels), members[index](pixels), atol=1e-5, rtol=1e-5)
        assert back.encoder is not ensemble.encoder.members[index]  # a copy: the ensemble is left as it was
        assert back.encoder.embed_dim == members[index].encoder.embed_dim and back.name == "back"


def test_a_member_is_refused_with_wrong_others_or_index():
    members = [_member(0), _member(1), _member(2)]
    ensemble = combine(members, name="ens")
    with pytest.raises(ModelError, match="m3 is not member 1 of ens"):
        member(ensemble, 0, [_member(3), members[2]])
    with pytest.raises(ModelError, match="m2 is not member 1 of ens"):
        member(ensemble, 0, [members[2], members[1]])  # the right models in the wrong order
    with pytest.raises(ModelError, match="needs the other 2 members, got 1"):
        member(ensemble, 0, [members[1]])
    with pytest.raises(ModelError, match="index 3 is not one of 0..2"):
        member(ensemble, 3, members[:2])
    with pytest.raises(ModelError, match="not a logit-mean ensemble"):
        member(members[0], 0, [members[1]])
