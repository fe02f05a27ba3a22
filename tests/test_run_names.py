"""Sweep run names: only the keys the sweep varies, dicts shortened to their class."""

from distill.run_names import run_name, short_value, swept_keys


def test_only_swept_keys_name_a_run():
    argv = ["-m", "debug=tiny", "trainer.max_steps=60", "loss=kd,jsd", "loss.temperature=range(1,3)",
            "+loss.components.cos={_target_:mylab.losses.CosineProbDistance}", "+loss.weights.cos=0.5,1.0",
            "hydra.sweep.dir=/tmp/x"]
    swept = swept_keys(argv)
    assert swept == {"loss", "loss.temperature", "loss.weights.cos"}
    task = ["debug=tiny", "trainer.max_steps=60", "loss=jsd", "loss.temperature=2",
            "+loss.components.cos={_target_:mylab.losses.CosineProbDistance}", "+loss.weights.cos=0.5"]
    assert run_name(task, swept) == "loss=jsd,loss.temperature=2,loss.weights.cos=0.5"


def test_a_swept_target_dict_reads_as_its_class_name():
    argv = ["+loss.components.cos={_target_:mylab.losses.CosineProbDistance},{_target_:mylab.losses.Other}"]
    swept = swept_keys(argv)
    assert swept == {"loss.components.cos"}
    name = run_name(["+loss.components.cos={_target_:mylab.losses.CosineProbDistance,margin:2}"], swept)
    assert name == "loss.components.cos=CosineProbDistance"
    assert short_value("{a:1}") == "_a_1_" and "/" not in short_value("a/b")


def test_optuna_params_count_as_swept_and_excluded_keys_stay_out():
    swept = swept_keys(["-m", "seed=1"], {"loss.temperature": "interval(1,4)"})
    assert swept == {"loss.temperature"}
    assert run_name(["seed=1", "loss.temperature=2.5"], swept | {"seed"}, exclude=["seed"]) == "loss.temperature=2.5"
    assert run_name(["seed=1"], set()) == "run"
