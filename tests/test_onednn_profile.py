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


SOFTMAX = ("onednn_verbose,v1,primitive,exec,cpu,softmax,jit:avx512_core,forward_training,src:f32::blocked:ab::f0 "
           "dst:f32::blocked:ab::f0,,alg:softmax_accurate axis:1,128x10,{ms}")


def trace(step_ms):
    """A verbose log of one step per entry of ``step_ms``: a reorder, the stem's forward, a BatchNorm, a
    softmax (as ms / 4) and a matmul (never counted)."""
    lines = [HEADER.rstrip("\n")]
    for ms in step_ms:
        lines += [REORDER.format(ms=0.01), STEM.format(ms=ms), BNORM.format(ms=ms / 2), MATMUL.format(ms=50.0),
                  SOFTMAX.format(ms=ms / 4), "I0000 a log line, not oneDNN's"]
    return "\n".join(lines)


STEM_KEY = ("convolution", "forward_training", "mb128_ic1oc32_ih28oh28kh5sh1dh0ph2_iw28ow28kw5sw1dw0pw2")


def test_whole_steps_after_the_warm_up_are_counted_and_only_matmuls_are_left_out():
    script = load_script("onednn_profile")
    # Three cold warm-up steps (100 ms), four at 2 ms, then one more that never ends (no next stem).
    rows, steps = script.parse_verbose(trace([100.0] * 3 + [2.0] * 4 + [50.0]))
    assert steps == 4
    assert rows[STEM_KEY][:2] == [8.0, 4] and rows[STEM_KEY][2] == "brg_conv_fwd:avx512_core"
    assert rows[("batch_normalization", "forward_training", "mb128ic64ih13iw13")][0] == 4.0
    assert rows[("softmax", "forward_training", "128x10")][0] == 2.0
    # A step runs from one stem to the next: the reorder before the next stem is the step's last op.
    assert rows[("reorder", "undef", "32x1x5x5")][1] == 4
    assert not any(key[0] == "matmul" for key in rows)
    # At most max_steps are counted: nin_keras' bench follows its model-only steps with tf.data ones.
    rows, steps = script.parse_verbose(trace([100.0] * 3 + [2.0] * 4 + [50.0]), max_steps=2)
    assert steps == 2 and rows[STEM_KEY][0] == 4.0


def test_table_puts_per_step_milliseconds_side_by_side_largest_difference_first():
    script = load_script("onednn_profile")
    ours = script.parse_verbose(trace([9.0] * 3 + [2.0] * 5))
    # The peer's stem is slower, and its BatchNorm and softmax are not oneDNN's.
    peer_trace = trace([9.0] * 3 + [10.0] * 3).replace(",batch_normalization,", ",not_onednn,")
    peer = script.parse_verbose(peer_trace.replace(",softmax,", ",not_onednn_either,"))
    lines = script.table(ours, peer).splitlines()
    assert lines[1].split()[:2] == ["2.00", "10.00"] and "(brg_conv_fwd/brg_conv_fwd)" in lines[1]
    assert lines[2].split()[:2] == ["0.00", "5.00"] and "not_onednn forward_training" in lines[2]
    bnorm = next(line for line in lines if "batch_normalization" in line)
    assert bnorm.split()[:2] == ["1.00", "0.00"] and "(bnorm_tbb_jit/-)" in bnorm
    # 2 + 1 + 0.5 + 0.01 against 10 + 5 + 2.5 + 0.01; 4 and 2 whole steps after the warm-up.
    assert lines[-1].split()[:2] == ["3.51", "17.51"] and "4 and 2 steps counted" in lines[-1]
