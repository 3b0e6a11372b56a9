import pytest

from podkit.config import Config, dump_config, from_dict, load_config, tiny_model_config, to_dict


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  arch: retinanet\n  depth: 18\ntrain:\n  lr: 0.01\n")
    cfg = load_config(
        path,
        [
            "train.lr=0.5",
            "data.min_size=[400, 500]",
            "methods=[{name: dst}, {name: dynamic_rcnn}]",
            "model.rpn.anchor_sizes=[[16], [32]]",
            "train.clip_grad_norm=null",
        ],
    )
    assert cfg.model.arch == "retinanet" and cfg.model.depth == 18
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert cfg.data.min_size == [400, 500]
    assert cfg.methods == [{"name": "dst"}, {"name": "dynamic_rcnn"}]
    assert cfg.model.rpn.anchor_sizes == ((16.0,), (32.0,))
    assert cfg.train.clip_grad_norm is None


def test_int_given_for_float_is_accepted_and_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=1", "model.width=0.25"])
    assert cfg.train.lr == 1.0
    # YAML 1.1 reads exponents without a dot as strings: still numbers here
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 0.001
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg
    assert from_dict(Config, to_dict(cfg), "") == cfg


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.archh=x", r"unknown config key 'model.archh' \(did you mean 'arch'\?\)"),
        ("train.max_iter=1.5", "train.max_iter: expected an integer"),
        ("train.amp=yes please", "train.amp: .*true, false or auto"),
        ("data.min_size=800", "data.min_size: expected a list"),
        ("model.rpn.anchor_sizes=[[a]]", r"model.rpn.anchor_sizes\[0\]\[0\]: expected a number"),
        ("train.lr", "expected key.sub=value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: malformed YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ValueError, match="scalar.yaml: a config file must be a mapping"):
        load_config(scalar)


def test_every_shipped_config_loads_also_by_its_packaged_name(tmp_path, monkeypatch):
    from podkit.config import SHIPPED_CONFIGS

    configs = sorted(SHIPPED_CONFIGS.rglob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        load_config(path)
    monkeypatch.chdir(tmp_path)  # no configs/ here: the names resolve to the shipped files
    shipped = load_config("configs/tiny/retinanet.yaml")
    assert (
        shipped
        == load_config("tiny/retinanet.yaml")
        == load_config(SHIPPED_CONFIGS / "tiny/retinanet.yaml")
    )
    assert shipped.model.arch == "retinanet"
    with pytest.raises(FileNotFoundError, match="configs/tiny/nothing.yaml: config file not found"):
        load_config("configs/tiny/nothing.yaml")


def test_config_choices_match_what_the_models_build():
    from podkit.config import RESNET_DEPTHS
    from podkit.models.resnet import DEPTHS

    assert set(RESNET_DEPTHS) == set(DEPTHS)


def test_a_recipe_extends_its_base_section_by_section(tmp_path):
    """`_base_` files merge under the file: mappings key by key, lists and values replaced,
    a chain of bases in order; the files read are recorded and the run's config.yaml holds
    the merged result."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base/model.yaml").write_text(
        "model:\n  depth: 18\n  rpn: {anchor_sizes: [[16], [32]], nms_threshold: 0.6}\n"
        "train:\n  lr: 0.1\n  steps: [0.5, 0.9]\n"
    )
    (tmp_path / "base/schedule.yaml").write_text("train:\n  lr: 0.2\n  max_iter: 50\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "_base_: [base/model.yaml, base/schedule.yaml]\n"
        "model:\n  rpn: {anchor_sizes: [[8]]}\ntrain:\n  steps: [0.7]\n"
    )
    cfg = load_config(recipe, ["train.max_iter=60"])
    assert cfg.model.depth == 18 and cfg.model.rpn.nms_threshold == 0.6  # kept from the base
    assert cfg.model.rpn.anchor_sizes == ((8.0,),)  # a list replaces the base's
    assert (cfg.train.lr, cfg.train.max_iter, cfg.train.steps) == (0.2, 60, [0.7])
    assert cfg.recipe == [str(tmp_path / f) for f in ("base/model.yaml", "base/schedule.yaml")] + [
        str(recipe)
    ]
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # merged, chain kept


def test_bad_bases_name_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ValueError, match=r"r.yaml: _base_ 'nowhere.yaml': no such file"):
        load_config(recipe)
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ValueError, match="b.yaml: _base_ 'a.yaml': .* circle"):
        load_config(tmp_path / "a.yaml")
    recipe.write_text("_base_: {model: x}\n")
    with pytest.raises(ValueError, match="r.yaml: _base_ must be a file name"):
        load_config(recipe)


def test_shipped_recipes_differ_from_their_bases_by_what_they_say():
    """The 2x recipe is the 1x one for twice the iterations; the tests' tiny model is the
    tiny recipes' model."""
    one, two = (load_config(f"configs/faster_rcnn_r50_fpn_{n}.yaml") for n in ("1x", "2x"))
    assert (one.train.max_iter, two.train.max_iter) == (90000, 180000)
    one.train.max_iter, one.recipe, two.recipe = 180000, [], []
    assert one == two
    tiny = load_config("configs/tiny/faster_rcnn_fpn.yaml").model
    assert tiny_model_config("faster_rcnn_fpn", 10) == tiny


def test_a_users_recipe_extends_a_shipped_one_by_name(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: tiny/retinanet.yaml\nmodel: {num_classes: 3}\n")
    cfg = load_config(mine)
    shipped = load_config("tiny/retinanet.yaml")
    assert cfg.model.num_classes == 3 and cfg.model.arch == "retinanet"
    assert cfg.train == shipped.train and cfg.recipe[-1] == str(mine)
