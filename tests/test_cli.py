"""The command line: TensorFlow's native start-up lines stay hidden, so stderr holds our message alone."""

from conftest import run_script


def test_stderr_holds_only_our_message_not_tensorflows_start_up_lines(tmp_path):
    for script in ("train_cifar_10.py", "predict_cifar_10.py"):
        result = run_script(script, "--wrn_N", 1, "--wrn_k", 1, "--weights_dir", tmp_path,
                            "--data_dir", tmp_path / "absent")
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
