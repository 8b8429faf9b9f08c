"""What a user sees from `aotrain` itself: help, and short errors for mistakes."""
from conftest import run_cli, run_cli_here


def test_help_lists_commands_and_recipes():
    top = run_cli("--help")
    assert top.returncode == 0 and "fit" in top.stdout and "world" in top.stdout
    assert "toy_low_nmi" in top.stdout and "trainer.max_steps" in top.stdout
    fit = run_cli("fit", "--help")
    assert fit.returncode == 0
    for expected in ("toy_low_nmi", "toy_high_nmi", "trainer.max_steps", "debug=smoke"):
        assert expected in fit.stdout


def test_unknown_recipe_is_a_short_error_with_the_choices(tmp_path):
    proc = run_cli_here("fit", "recipe=toy_no_such_thing", root=tmp_path)
    assert proc.returncode == 2
    assert "recipe/toy_no_such_thing" in proc.stderr and "toy_low_nmi" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing is written for a rejected command"


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    proc = run_cli_here("fit", "trainer.maxsteps=3", root=tmp_path)
    assert proc.returncode == 2
    assert "trainer.maxsteps" in proc.stderr and "max_steps" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_override_and_unknown_command(tmp_path):
    proc = run_cli("fit", "trainer.max_steps", root=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("train", root=tmp_path)
    assert proc.returncode == 2 and "fit" in proc.stderr


def test_bad_world_value_is_a_short_error(tmp_path):
    proc = run_cli_here("world", "world.pool.joint=banana", root=tmp_path)
    assert proc.returncode == 2
    assert "joint" in proc.stderr and "Traceback" not in proc.stderr


def test_print_config_shows_the_recipe(tmp_path):
    proc = run_cli("fit", "recipe=toy_high_nmi", "--print-config", root=tmp_path)
    assert proc.returncode == 0
    assert "nmi: 0.78" in proc.stdout and "name: toy_high_nmi" in proc.stdout


def test_unreachable_subset_target_names_the_feasible_range(tmp_path):
    proc = run_cli_here("fit", "debug=smoke", "subset.nmi=0.999", root=tmp_path)
    assert proc.returncode == 2
    assert "feasible NMI range" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("toyworld/*/subsets/*")), "no half-written subset"


def test_real_data_without_a_pool_says_what_to_set(tmp_path):
    proc = run_cli_here("fit", "recipe=null", "~world", root=tmp_path)
    assert proc.returncode == 2
    assert "data.pool" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli_here("fit", "recipe=null", "~world", f"data.pool={tmp_path}/nowhere",
                        "eval=imagenet_ao", f"eval.benchmarks.imagenet_ao={tmp_path}", root=tmp_path)
    assert proc.returncode == 2
    assert "pool folder not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli_here("fit", "~world", root=tmp_path)  # the default recipe needs the toy world
    assert proc.returncode == 2
    assert "recipe=null" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli_here("fit", "recipe=null", "world=null", root=tmp_path)  # same as ~world
    assert proc.returncode == 2
    assert "data.pool" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_values_are_short_errors(tmp_path):
    proc = run_cli_here("fit", "debug=smoke", "model.name=ViT-Q-99", root=tmp_path)
    assert proc.returncode == 2 and "ViT-Q-99" in proc.stderr and "toy-vit-tiny" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli_here("fit", "debug=smoke", "trainer.precision=17-fancy", root=tmp_path)
    assert proc.returncode == 2 and "precision" in proc.stderr and "Traceback" not in proc.stderr
