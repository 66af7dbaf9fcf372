"""Point 2: target profiles as strict, extendable data."""

from __future__ import annotations

import pytest

from edgec.errors import ProfileError, UsageError
from edgec.profiles import IODtype, Quantization, Runtime, builtin_names, load_profile

REQUIRED = {"rpi4", "rpi5", "phone", "cortex-m4", "cortex-m7", "esp32-s3", "x86-64"}


def test_builtin_profiles_load_with_their_facts():
    assert set(builtin_names()) >= REQUIRED
    for name in builtin_names():
        p = load_profile(name)
        assert p.name == name and p.arch and p.threads >= 1
        assert p.budgets.max_accuracy_drop is not None
    m4 = load_profile("cortex-m4")
    assert m4.runtime is Runtime.TFLM and m4.is_micro
    assert (m4.budgets.ram_bytes, m4.budgets.flash_bytes) == (256 * 1024, 1024 * 1024)
    assert m4.input_dtype is IODtype.INT8
    m7 = load_profile("cortex-m7")  # extends cortex-m4
    assert (m7.budgets.ram_bytes, m7.budgets.flash_bytes) == (512 * 1024, 2 * 1024 * 1024)
    assert m7.budgets.max_accuracy_drop == m4.budgets.max_accuracy_drop  # inherited key by key
    phone = load_profile("phone")
    assert phone.quantization is Quantization.INT8 and phone.variants == (Quantization.FLOAT16,)
    rpi4 = load_profile("rpi4")
    assert rpi4.threads == 4 and rpi4.arch == "aarch64"


def test_user_profile_extends_builtin(tmp_path):
    path = tmp_path / "tiny-m4.toml"
    path.write_text(
        'extends = "cortex-m4"\ndescription = "M4 with 64 KB"\n[budgets]\nram_bytes = 65536\n'
    )
    p = load_profile(path)
    assert p.name == "tiny-m4" and p.budgets.ram_bytes == 65536
    assert p.budgets.flash_bytes == 1024 * 1024 and p.runtime is Runtime.TFLM


def test_unknown_key_names_file_key_and_valid_keys(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('extends = "rpi4"\nthreds = 2\n')
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert str(path) in msg and "'threds'" in msg and "threads" in msg and "\n" not in msg


def test_unknown_budget_key_and_bad_values(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('extends = "rpi4"\n[budgets]\nlatency = 3\n')
    with pytest.raises(ProfileError, match=r"unknown key 'budgets.latency'.*latency_ms"):
        load_profile(path)
    path.write_text('extends = "rpi4"\nquantization = "int3"\n')
    with pytest.raises(
        ProfileError, match=r"'quantization' = 'int3' is not one of: float32, dynamic"
    ):
        load_profile(path)
    path.write_text('extends = "rpi4"\n[budgets]\nram_bytes = "lots"\n')
    with pytest.raises(ProfileError, match="must be a number"):
        load_profile(path)
    path.write_text("this is = = not toml")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(path)


def test_unknown_target_lists_valid_ones():
    with pytest.raises(UsageError) as err:
        load_profile("rpi3")
    assert "'rpi3'" in str(err.value) and "cortex-m4" in str(err.value)


def test_extends_cycle_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(tmp_path / "a.toml")


def test_cli_targets_lists_and_shows(run_cli):
    code, out, _ = run_cli("targets")
    assert code == 0 and all(name in out for name in REQUIRED)
    code, out, _ = run_cli("targets", "show", "rpi4")
    assert code == 0 and "threads" in out and "budgets.latency_ms" in out
    code, _, err = run_cli("targets", "show", "nope")
    assert code == 2 and "unknown target 'nope'" in err


def test_a_typo_in_a_profile_pass_id_fails_when_it_loads(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "rpi4"\npasses = [{ id = "prunee" }]\n')
    exe = Path(sys.executable).with_name("edgec")
    run = subprocess.run(
        [str(exe), "targets", "show", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "unknown pass 'prunee'" in run.stderr
    assert "valid: " in run.stderr and "prune" in run.stderr.split("valid: ")[1]
    # A multi-target build checks every profile before it writes any artifact.
    model = tmp_path / "m.keras"
    model.write_bytes(b"never loaded")
    out = tmp_path / "out"
    run = subprocess.run(
        [str(exe), "build", str(model), "-t", "rpi4", "-t", str(bad), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "prunee" in run.stderr and not out.exists()


def test_every_profile_round_trips_through_its_manifest_form():
    """A manifest's ``target`` rebuilds the profile exactly (what --from-manifest replays)."""
    from edgec.errors import ProfileError
    from edgec.profiles import Profile, builtin_names, load_profile

    for name in builtin_names():
        profile = load_profile(name)
        assert Profile.from_dict(profile.to_dict()) == profile
    broken = {**load_profile("rpi4").to_dict(), "threads": 0}
    with pytest.raises(ProfileError, match="'threads' = 0"):
        Profile.from_dict(broken, where="manifest.json: field 'target'")
