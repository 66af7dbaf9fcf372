"""Built-in target profiles, as TOML data files (installed as ``edgec.targets``)."""
