"""scripts/onednn_profile.py: per-step primitive times from real ONEDNN_VERBOSE output, warm-up left out."""

from test_ablation import load_script

# Lines as TensorFlow 2.21's oneDNN 3.7 printed them (ONEDNN_VERBOSE=1), with the log lines around them.
HEADER = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)
onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,memory_descriptors,attributes,auxiliary,problem_desc,exec_time
"""
STEM = ("onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32::blocked:"
        "acdb::f0 wei:f32:a:blocked:Adcb16a::f0 bia:f32:a:blocked:a::f0 dst:f32::blocked:acdb::f0,attr-scratchpad:user "
        "attr-post-ops:eltwise_relu,alg:convolution_direct,mb128_ic1oc32_ih28oh28kh5sh1dh0ph2_iw28ow28kw5sw1dw0pw2,{ms}")
BNORM = ("onednn_verbose,v1,primitive,exec,cpu,batch_normalization,bnorm_tbb_jit:avx512_core,forward_training,data:f32::"
         "blocked:acdb::f0,,flags:CHR,mb128ic64ih13iw13,{ms}")
REORDER = ("onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:cdba::f0 dst:f32::blocked:"
           "Adcb16a::f0,,,32x1x5x5,{ms}")
MATMUL = ("onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core,undef,src:f32::blocked:ab::f0 wei:f32::"
          "blocked:ab::f0 dst:f32::blocked:ab::f0,,,1024x1024:1024x1024,{ms}")


def trace(step_ms):
    """A verbose log of one step per entry of ``step_ms``: the stem's forward, a reorder and a BatchNorm."""
    lines = [HEADER.rstrip("\n"), MATMUL.format(ms=50.0)]
    for ms in step_ms:
        lines += [REORDER.format(ms=0.01), STEM.format(ms=ms), BNORM.format(ms=ms / 2), "I0000 a log line, not oneDNN's"]
    return "\n".join(lines)


def test_warm_up_steps_and_matmuls_are_left_out_and_steps_are_counted_by_the_first_convolution():
    script = load_script("onednn_profile")
    # Three cold warm-up steps (100 ms), then four at 2 ms: only the four count.
    rows, steps = script.parse_verbose(trace([100.0] * 3 + [2.0] * 4))
    assert steps == 4
    stem = ("convolution", "forward_training", "mb128_ic1oc32_ih28oh28kh5sh1dh0ph2_iw28ow28kw5sw1dw0pw2")
    assert rows[stem][:2] == [8.0, 4] and rows[stem][2] == "brg_conv_fwd:avx512_core"
    assert rows[("batch_normalization", "forward_training", "mb128ic64ih13iw13")][0] == 4.0
    # The reorder before the fourth stem execution belongs to the last warm-up step.
    assert rows[("reorder", "undef", "32x1x5x5")][1] == 3
    assert not any(key[0] == "matmul" for key in rows)


def test_table_puts_per_step_milliseconds_side_by_side_with_totals():
    script = load_script("onednn_profile")
    ours = script.parse_verbose(trace([9.0] * 3 + [2.0] * 4))
    peer = script.parse_verbose(trace([9.0] * 3 + [3.0] * 2).replace(BNORM.split(",")[5], "not_profiled"))
    lines = script.table(ours, peer).splitlines()
    stem = next(line for line in lines if "mb128_ic1oc32" in line)
    assert stem.split()[:2] == ["2.00", "3.00"] and "(brg_conv_fwd/brg_conv_fwd)" in stem
    bnorm = next(line for line in lines if "batch_normalization" in line)
    assert bnorm.split()[:2] == ["1.00", "0.00"] and "(bnorm_tbb_jit/-)" in bnorm
    # 2 + 1 + 0.01 x 3 / 4 against 3 + 0.01 / 2 (the peer's BatchNorm is not oneDNN's)
    assert lines[-1].split()[:2] == ["3.01", "3.00"] and "4 and 2 steps counted" in lines[-1]
