"""The profile's tables (danie_nnunet/profile_tables.py), on event lists named as a card's profiler names them:
each kernel or call counted once, in the family its name says."""
from types import SimpleNamespace

from torch.autograd import DeviceType

from danie_nnunet import profile_tables


def test_device_busy_counts_each_kernel_once():
    # the profiler credits a kernel's time to its kernel event and to the operator that launched it: a compiled
    # DANIE-S step's header read "device busy 129.8 ms" for a 115.4 ms step (H100), twice the 64.1 ms of its kernels
    launcher = SimpleNamespace(device_type=DeviceType.CPU, self_device_time_total=12_000.0, count=3)
    kernel = SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=12_000.0, count=3)
    memcpy = SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=500.0, count=2)
    annotation = SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=9_000.0, count=1,
                                 is_user_annotation=True)
    assert profile_tables.device_activity([launcher, kernel, memcpy, annotation]) == (12_500.0, 5)


def test_device_time_by_kernel_family_sorts_the_h100_profiles_kernels():
    # kernel names from the compiled DANIE-S's H100 profile (call3_profile_S_compiled.txt) and the eager ones

    def kernel(name, us, n=1):
        return SimpleNamespace(key=name, device_type=DeviceType.CUDA, self_device_time_total=us, count=n)
    events = [
        kernel("dgrad2d_c1_k1_nhwc_specialized", 1831.0, 19), kernel("wgrad2d_shmem_tiling", 1622.0, 8),
        kernel("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc", 1150.0, 14),
        kernel("sm80_xmma_wgrad_implicit_gemm_indexed_bf16bf16_bf16f32_f32", 906.0, 2),
        kernel("sm80_xmma_gemm_f32f32_f32f32_f32_nt_n_tilesize32x32x8", 1382.0, 4),
        kernel("nvjet_sm90_tst_64x64_64x13_2x1_v_bz_splitK_NTT", 980.0, 44),
        kernel("fmha_cutlassB_bf16_aligned_64x64_k32_seqaligned_sm80", 1766.0, 22),
        kernel("triton_red_fused__native_batch_norm_legit_functional_convolution_0", 1457.0),
        kernel("triton_poi_fused__native_batch_norm_legit_functional_convolution_1", 698.0, 2),
        kernel("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>", 787.0, 18),
        kernel("cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float>", 300.0),
        kernel("Memcpy HtoD (Pageable -> Device)", 50.0, 2),
        kernel("void at::native::vectorized_elementwise_kernel<4, ...>", 10.0, 3),
        SimpleNamespace(key="aten::mm", device_type=DeviceType.CPU, self_device_time_total=4242.0, count=272),
    ]
    families = {f: (us, n) for f, us, n in profile_tables.device_time_by_family(events)}
    assert families == {
        "convolutions (cuDNN)": (1831.0 + 1622.0 + 1150.0 + 906.0, 43),
        "matrix products (cuBLAS)": (1382.0 + 980.0, 48),
        "attention": (1766.0, 22),
        "Inductor-generated (Triton)": (1457.0 + 698.0, 3),
        "optimizer and foreach": (787.0, 18),
        "normalisation (eager)": (300.0, 1),
        "copies and memsets": (50.0, 2),
        "other": (10.0, 3),
    }
    rows = profile_tables.device_time_by_family(events)
    assert [us for _, us, _ in rows] == sorted((us for _, us, _ in rows), reverse=True)
    assert sum(us for _, us, _ in rows) == profile_tables.device_activity(events)[0]  # every kernel in one family
    table = profile_tables.family_table(events).splitlines()
    assert table[2] == "| convolutions (cuDNN) | 5.5 | 43 % | 43 |" and len(table) == 2 + len(rows)
    # the generated kernels alone, by what they fuse (their numbers dropped): with gpu_launches.py's bytes
    assert profile_tables.generated_time_by_family(events + [kernel("triton_poi_fused__to_copy_7", 20.0, 4)]) == [
        ("red_fused__native_batch_norm_legit_functional_convolution", 1457.0, 1),
        ("poi_fused__native_batch_norm_legit_functional_convolution", 698.0, 2),
        ("poi_fused__to_copy", 20.0, 4)]
    assert profile_tables.generated_family_table(events).splitlines()[2] == \
        "| red_fused__native_batch_norm_legit_functional_convolution | 1.46 | 1 |"


def test_library_calls_by_shape_take_device_time_from_the_innermost_operator():
    # on CUDA a kernel's time is the self device time of the operator that launched it: aten::convolution holds
    # none (its child aten::cudnn_convolution launched the kernel), so no call counts twice

    def op(name, shapes, device_us, n=1):
        return SimpleNamespace(key=name, device_type=DeviceType.CPU, input_shapes=shapes,
                               self_device_time_total=device_us, self_cpu_time_total=50.0, count=n)
    events = [
        op("aten::convolution", [[12, 32, 512, 512], [32, 32, 3, 3], [], [2]], 0.0, 2),
        op("aten::cudnn_convolution", [[12, 32, 512, 512], [32, 32, 3, 3], [], [2]], 900.0, 2),
        op("aten::convolution_backward", [[12, 64, 128, 128], [12, 64, 128, 128], [64, 1, 3, 3]], 1100.0, 11),
        op("aten::bmm", [[768, 256, 64], [768, 64, 256]], 80.0, 4),
        op("aten::add", [[12, 32, 512, 512], [12, 32, 512, 512]], 400.0, 3),  # not a library call
        SimpleNamespace(key="sm90_xmma_fprop", device_type=DeviceType.CUDA, input_shapes=[],
                        self_device_time_total=900.0, self_cpu_time_total=0.0, count=2),
    ]
    assert profile_tables.library_calls_by_shape(events) == [
        ("aten::convolution_backward", "12x64x128x128 12x64x128x128 64x1x3x3", 1100.0, 11),
        ("aten::cudnn_convolution", "12x32x512x512 32x32x3x3", 900.0, 2),
        ("aten::bmm", "768x256x64 768x64x256", 80.0, 4)]
    assert profile_tables.library_calls_by_shape(events, limit=1)[0][0] == "aten::convolution_backward"
    table = profile_tables.library_shape_table(events).splitlines()
    assert table[0] == "| library operator | input shapes | device ms | calls |"
    assert table[2] == "| aten::convolution_backward | 12x64x128x128 12x64x128x128 64x1x3x3 | 1.10 | 11 |"


def test_host_time_by_family_separates_launching_from_waiting():
    # CPU-side event names of a compiled CUDA step: the CUDA runtime's calls, Inductor's launchers, the library
    # operators' host side, the compiled graph's Python wrappers, autograd; device events do not count

    def host(name, us, n=1):
        return SimpleNamespace(key=name, device_type=DeviceType.CPU, self_cpu_time_total=us, count=n)
    events = [
        host("cudaLaunchKernel", 3000.0, 700), host("cuLaunchKernelEx", 2000.0, 1500),
        host("cudaStreamSynchronize", 900.0, 2), host("cudaMemcpyAsync", 100.0, 3), host("cudaDeviceSynchronize", 5.0),
        host("triton_poi_fused__native_batch_norm_legit_functional_convolution_1", 40.0, 2),
        host("triton_red_fused_add_mul_sum_7", 20.0),
        host("aten::convolution_backward", 11155.0, 132), host("aten::cudnn_convolution", 5741.0, 132),
        host("aten::convolution", 300.0, 132), host("aten::mm", 7329.0, 272), host("aten::addmm", 3112.0, 88),
        host("aten::bmm", 1721.0, 44), host("aten::_efficient_attention_backward", 729.0, 22),
        host("aten::_fused_adamw_", 562.0), host("Optimizer.step#AdamW.step", 80.0),
        host("aten::_foreach_norm", 30.0), host("Torch-Compiled Region: 0/0", 400.0),
        host("## Call CompiledFxGraph fey2jiwgstgm44agm3dd", 7000.0, 2), host("CompiledFunctionBackward", 500.0),
        host("TorchDynamo Cache Lookup", 50.0), host("AOTDispatcher Runtime Wrapper Prologue", 40.0),
        host("autograd::engine::evaluate_function: CompiledFunctionBackward", 10.0),
        host("torch::autograd::AccumulateGrad", 600.0, 400), host("SumBackward0", 8.0),
        host("aten::_conv_depthwise2d", 70.0, 10), host("aten::copy_", 1115.0, 73),
        host("aten::empty_strided", 200.0, 50),
        host("some_python_annotation", 1.0),
        SimpleNamespace(key="triton_red_fused_add_mul_sum_7", device_type=DeviceType.CUDA, self_cpu_time_total=0.0,
                        self_device_time_total=1457.0, count=1),
    ]
    families = {f: (us, n) for f, us, n in profile_tables.host_time_by_family(events)}
    assert families == {
        "library operators (host side)": (11155.0 + 5741.0 + 300.0 + 7329.0 + 3112.0 + 1721.0 + 729.0 + 70.0, 832),
        "compiled-graph runtime (Python)": (400.0 + 7000.0 + 500.0 + 50.0 + 40.0, 6),
        "CUDA runtime: kernel launches": (5000.0, 2200),
        "other operators": (1315.0, 123),
        "CUDA runtime: waits and copies": (1005.0, 6),
        "optimizer and foreach": (672.0, 3),
        "autograd engine": (618.0, 402),
        "Inductor kernel launchers": (60.0, 3),
        "other": (1.0, 1),
    }
    table = profile_tables.host_family_table(events).splitlines()
    assert table[0] == "| host family | host ms (profiled) | share | calls |"
    assert table[2].startswith("| library operators (host side) | 30.2 | ") and len(table) == 2 + len(families)
