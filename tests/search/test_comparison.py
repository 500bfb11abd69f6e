"""search/comparison.py: test.py --compare's table, and what it refuses to put in one."""


def test_compare_refuses_checkpoints_tested_on_different_data(tmp_path):
    """The digits beside the diabetes table (or another data folder) are not one table; the
    same folder written two ways is the same data."""
    from parse_config import ConfigParser
    from search.comparison import test_data_problem

    def tested_on(kind, data_dir, name):
        return ConfigParser({"data_loader": {"type": kind, "args": {"data_dir": data_dir}}},
                            resume=tmp_path / name / "model_best.pth")

    data = tmp_path / "data"
    digits = [tested_on("DigitsDataLoader", f"{data}/", "a"),
              tested_on("DigitsDataLoader", str(data), "b")]
    assert test_data_problem(digits) is None
    problem = test_data_problem([*digits, tested_on("DiabetesDataLoader", str(data), "c")])
    assert problem == (
        f"--compare: the checkpoints are tested on different data (DigitsDataLoader on {data}: "
        f"{tmp_path}/a/model_best.pth, {tmp_path}/b/model_best.pth; DiabetesDataLoader on "
        f"{data}: {tmp_path}/c/model_best.pth); compare models of one task, or give them one "
        f"test config with -c")
    assert test_data_problem([digits[0], tested_on("DigitsDataLoader", str(tmp_path), "d")])
