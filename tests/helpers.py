"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on sys.path)."""


def cli_options(**options):
    """Command-line options from keyword arguments, in their order, for `fastlm` commands:
    cli_options(seq_len=10, out=path) == ["--seq-len", "10", "--out", str(path)]."""
    argv = []
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def ids_training_options(directory):
    """`fastlm train` options for a tiny model trained on directory/ids.bin, a token file
    encoded with directory/tok.json, and saved to directory/model."""
    return cli_options(
        ids=directory / "ids.bin",
        tokenizer=directory / "tok.json",
        hidden=8,
        embed=8,
        seq_len=10,
        batch_size=4,
        sample_tokens=5,
        out=directory / "model",
    )
