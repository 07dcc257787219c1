import json

import keras
import numpy as np
import pytest

from helpers import build_preset, needs_bf16_kernels, random_images, save_and_reload
from nin_keras.errors import ConfigError
from nin_keras.precision import (cpu_flags, cpu_has_native_bf16, float32_copy, precision_scope,
                                 resolve_precision)


@pytest.mark.parametrize("flags, has_gpu, expected", [
    ({"avx2", "amx_bf16", "amx_tile"}, False, "bfloat16"),
    ({"avx512f", "avx512_bf16"}, False, "bfloat16"),
    ({"avx2", "avx512f"}, False, "float32"),  # no native bf16: emulation would be slower
    ({"amx_bf16"}, True, "float32"),  # GPUs: float32 unless asked
])
def test_auto_precision_follows_the_hardware(flags, has_gpu, expected, monkeypatch):
    monkeypatch.delenv("NIN_KERAS_PRECISION", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert resolve_precision("auto", has_gpu=has_gpu, flags=flags) == expected


def test_a_capped_cpu_gets_what_the_cpu_it_stands_for_gets(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (a user's AVX2 machine): auto is float32; bfloat16 asked for is refused in one
    line on an AVX-512 CPU, where oneDNN would abort at the first step (seen: a traceback)."""
    monkeypatch.delenv("NIN_KERAS_PRECISION", raising=False)
    avx512_bf16 = {"avx2", "avx512f", "avx512_bf16"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert resolve_precision("auto", has_gpu=False, flags=avx512_bf16) == "float32"
    with pytest.raises(ConfigError) as info:
        resolve_precision("bfloat16", has_gpu=False, flags=avx512_bf16)
    assert str(info.value) == ("bfloat16 cannot run with ONEDNN_MAX_CPU_ISA=AVX2 on this AVX-512 CPU (oneDNN has "
                               "no bfloat16 kernel below AVX-512); use --precision float32, or unset the cap. "
                               "Received: --precision bfloat16")
    monkeypatch.setenv("NIN_KERAS_PRECISION", "bfloat16")
    with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA=AVX2 .* Received: NIN_KERAS_PRECISION=bfloat16$"):
        resolve_precision("auto", has_gpu=False, flags=avx512_bf16)
    monkeypatch.delenv("NIN_KERAS_PRECISION")
    assert resolve_precision("bfloat16", has_gpu=False, flags={"avx2"}) == "bfloat16"  # TensorFlow's own kernels
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # emulated bfloat16: runs, but not chosen by auto
    assert resolve_precision("auto", has_gpu=False, flags=avx512_bf16) == "float32"
    assert resolve_precision("bfloat16", has_gpu=False, flags=avx512_bf16) == "bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert resolve_precision("auto", has_gpu=False, flags=avx512_bf16) == "bfloat16"


def test_the_older_name_of_the_cap_is_honoured_and_named(monkeypatch):
    """oneDNN also reads DNNL_MAX_CPU_ISA (its older name; ONEDNN_MAX_CPU_ISA wins when both are set): such a
    run is capped, and the refusal and the bench's header name the variable the user set."""
    from nin_keras.precision import onednn_cap, onednn_cap_variable

    for name in ("NIN_KERAS_PRECISION", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert onednn_cap_variable() is None and onednn_cap() == ""
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")  # set but empty: not a cap, as for oneDNN
    assert onednn_cap_variable() == "DNNL_MAX_CPU_ISA" and onednn_cap() == "AVX2"
    avx512_bf16 = {"avx2", "avx512f", "avx512_bf16"}
    assert resolve_precision("auto", has_gpu=False, flags=avx512_bf16) == "float32"
    with pytest.raises(ConfigError, match=r"^bfloat16 cannot run with DNNL_MAX_CPU_ISA=AVX2 on this AVX-512 CPU"):
        resolve_precision("bfloat16", has_gpu=False, flags=avx512_bf16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "sse41")  # both set: the newer name wins
    assert onednn_cap_variable() == "ONEDNN_MAX_CPU_ISA" and onednn_cap() == "SSE41"
    with pytest.raises(ConfigError, match=r"^bfloat16 cannot run with ONEDNN_MAX_CPU_ISA=SSE41 on this"):
        resolve_precision("bfloat16", has_gpu=False, flags=avx512_bf16)


def test_explicit_precision_and_environment_override(monkeypatch):
    assert resolve_precision("float16", has_gpu=False, flags=set()) == "float16"
    monkeypatch.setenv("NIN_KERAS_PRECISION", "float32")
    assert resolve_precision("auto", has_gpu=False, flags={"amx_bf16"}) == "float32"
    monkeypatch.setenv("NIN_KERAS_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="Received: 'fp8'"):
        resolve_precision("auto", has_gpu=False, flags=set())
    with pytest.raises(ConfigError, match="Received: 'half'"):
        resolve_precision("half")


def test_cpu_flags_reads_proc_cpuinfo_format(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert cpu_has_native_bf16(cpu_flags(str(info)))
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_precision_scope_builds_mixed_models_and_restores_the_policy():
    before = keras.mixed_precision.global_policy().name
    with precision_scope("bfloat16"):
        model = build_preset("tiny")
    assert keras.mixed_precision.global_policy().name == before
    assert model.get_layer("block1_conv0").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv0").kernel.dtype == "float32"  # variables stay float32
    assert model.get_layer("predictions").compute_dtype == "float32"


@needs_bf16_kernels
def test_float32_copy_of_a_saved_bfloat16_model(tmp_path):
    with precision_scope("bfloat16"):
        model = build_preset("tiny")
    reloaded = save_and_reload(model, tmp_path)
    copy = float32_copy(reloaded)
    assert {layer.compute_dtype for layer in copy.layers} == {"float32"}
    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    images = random_images(16)
    # bfloat16 keeps ~3 significant digits: the copy agrees with the mixed model to that precision.
    np.testing.assert_allclose(copy.predict(images, verbose=0), model.predict(images, verbose=0), atol=2e-2)
    plain = build_preset("tiny")
    assert float32_copy(plain) is plain


@needs_bf16_kernels
def test_fit_records_the_resolved_precision(tmp_path):
    from nin_keras.fit import main

    out = tmp_path / "run"
    assert main(["--preset", "tiny", "--epochs", "1", "--limit", "600", "--test-limit", "200",
                 "--precision", "bfloat16", "--output-dir", str(out), "--verbose", "0"]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    saved = keras.saving.load_model(out / "model.keras")
    assert saved.get_layer("block1_conv0").compute_dtype == "bfloat16"
